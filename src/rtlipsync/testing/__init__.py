"""Fakes and peers for tests and benchmarks, importable by both the same way.

- `fake_openai`: a local server speaking OpenAI's HTTP protocol (chat, transcription, speech);
- `fake_realtime`: a local server speaking OpenAI's Realtime protocol over a WebSocket;
- `peers`: a real aiortc microphone that plays speech in real time;
- `serving`: any ASGI app (ours, a fake) on a loopback port in a thread; `wait_for`;
- `speech`: speech from the offline voice, WAV files.

They speak the real protocols, so what they exercise is the client code a user runs.
"""
