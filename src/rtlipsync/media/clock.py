"""The media clock: one tick per video frame, paced by a clock that tests can step.

A session's audio and video leave one 40 ms frame at a time, at the wall clock's pace and
never faster, so a receiver's A/V sync holds and idle frames flow when nothing is said.
`MediaClock` owns that pacing; what a tick does is the session's business. The time source
is a port: `LoopClock` is the event loop's monotonic time, `ManualClock` moves only when a
test advances it, so a session's frames can be stepped one by one without waiting.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Awaitable, Callable
from typing import Protocol

from rtlipsync.media.frames import FPS

FRAME_PERIOD = 1.0 / FPS
STALL = 0.25  # s behind schedule after which the clock re-anchors instead of bursting


class Clock(Protocol):
    """A monotonic time source the media clock is paced by."""

    def now(self) -> float: ...

    async def sleep(self, seconds: float) -> None: ...


class LoopClock:
    """The running event loop's monotonic time: the clock of a live session."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


class ManualClock:
    """Time that moves only when `advance` is called: frame-exact session tests.

    `advance` wakes each sleeper whose time has come, in order, and waits until it has
    slept again (or ended), so when it returns every tick due by then has run.
    """

    def __init__(self, start: float = 0.0, settle_timeout: float = 10.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self._slept = asyncio.Event()
        self.settle_timeout = settle_timeout  # real seconds a woken sleeper may take

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + max(0.0, seconds), next(self._order), future))
        self._slept.set()
        await future

    @property
    def sleeping(self) -> int:
        """How many sleepers wait for time to move."""
        return sum(not f.done() for _, _, f in self._sleepers)

    async def settle(self) -> None:
        """Wait until something sleeps on this clock (the media clock's first tick ran)."""
        if not self.sleeping:
            self._slept.clear()
            await asyncio.wait_for(self._slept.wait(), self.settle_timeout)

    async def advance(self, seconds: float) -> None:
        """Move time on by ``seconds``, running everything that falls due on the way."""
        until = self._now + seconds
        while self._sleepers and self._sleepers[0][0] <= until + 1e-9:
            at, _, future = heapq.heappop(self._sleepers)
            if future.done():
                continue
            self._now = max(self._now, at)
            self._slept.clear()
            future.set_result(None)
            try:
                await asyncio.wait_for(self._slept.wait(), self.settle_timeout)
            except TimeoutError:
                break  # it did not sleep again (it ended): nothing more to run for it
        self._now = max(self._now, until)

    def jump(self, seconds: float) -> None:
        """Time passes without waking anyone, as when a tick itself takes that long."""
        self._now += seconds


class MediaClock:
    """Calls ``tick(k)`` for frame k = 0, 1, 2, ... every `FRAME_PERIOD` of ``clock``.

    A tick that overruns delays the next one, never skips it; after a stall of more than
    `STALL` the schedule re-anchors at now rather than bursting frames to catch up (a
    receiver would see them all at once).
    """

    def __init__(
        self,
        tick: Callable[[int], Awaitable[None]],
        clock: Clock | None = None,
        period: float = FRAME_PERIOD,
    ) -> None:
        self.tick = tick
        self.clock = clock or LoopClock()
        self.period = period
        self.frames = 0  # ticks run so far
        self.stalls = 0  # times the schedule was re-anchored

    async def run(self) -> None:
        start = self.clock.now()
        while True:
            await self.tick(self.frames)
            self.frames += 1
            delay = start + self.frames * self.period - self.clock.now()
            if delay < -STALL:
                self.stalls += 1
                start = self.clock.now() - self.frames * self.period
                delay = 0.0
            await self.clock.sleep(max(0.0, delay))
