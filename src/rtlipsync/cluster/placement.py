"""Which worker takes a new session: the one with the most free capacity.

Capacity is declared per worker, in sessions: a CPU host's sessions, or a GPU host's frame
budget divided by the 25 fps one session needs. Placement only reads what the gateway knows
of each worker, so it is the same code in tests and on a cluster.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rtlipsync.media.frames import FPS


class ClusterFull(Exception):
    """No live worker has room for another session."""


@dataclass(frozen=True)
class WorkerLoad:
    """What the gateway knows of one worker."""

    name: str
    capacity: int  # sessions it may host at once
    sessions: int = 0  # sessions placed on it and not yet ended
    alive: bool = True

    @property
    def free(self) -> int:
        return max(self.capacity - self.sessions, 0) if self.alive else 0


def capacity_for(sessions: int | None = None, fps_budget: float | None = None) -> int:
    """A worker's capacity in sessions, from sessions declared outright or from a GPU's
    frame budget (frames per second it can render over all its sessions)."""
    if sessions is not None:
        if sessions < 1:
            raise ValueError(f"a worker must host at least one session, not {sessions}")
        return int(sessions)
    if fps_budget is None:
        raise ValueError("declare a worker's capacity: sessions or an fps budget")
    if fps_budget < FPS:
        raise ValueError(f"an fps budget of {fps_budget:g} cannot hold one {FPS} fps session")
    return int(fps_budget // FPS)


def choose(workers: Sequence[WorkerLoad]) -> str:
    """The worker for a new session: most free places, then the fewest sessions (an even
    spread between equal hosts), then its name (a stable choice)."""
    open_ = [w for w in workers if w.free > 0]
    if not open_:
        alive = [w for w in workers if w.alive]
        if not alive:
            raise ClusterFull("no session worker is running: start one, or wait for it to restart")
        places = sum(w.capacity for w in alive)
        raise ClusterFull(
            f"every session worker is full ({places} sessions on {len(alive)} workers); "
            "try again later, or add a worker"
        )
    best = min(open_, key=lambda w: (-w.free, w.sessions, w.name))
    return best.name
