"""Sessions on many machines, on Ray Core (the ``cluster`` extra).

One gateway answers the browser (the page, signalling, the session routes) and places each
new session on a session worker; the worker owns that session's aiortc peer, so its media
flows from the worker to the browser directly and is encoded where it is rendered.

- `placement`: which worker takes a new session (pure: no Ray, no network);
- `worker`: the Ray actor that hosts sessions (a whole rtlipsync server in the actor,
  loading its engine once for all of them);
- `cluster`: the workers on Ray, which session lives on which, failover and restarts;
- `relay`: what a request passed on to a worker names, and the headers the worker gets;
- `sockets`: the gateway's WebSockets (``/ws`` sessions, ``/humanecho``);
- `gateway`: the gateway's routes.
"""
