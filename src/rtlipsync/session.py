"""One user's conversation with one avatar: its media clock, speech, and interruption.

A session owns an engine stream and a clock. Every 40 ms the clock takes the next frame from
the stream (a speech frame when one is ready, else an idle frame with silence) and hands it to
every sink (a WebRTC track pair, a WebSocket, a recorder). Audio and video leave together, one
frame and its 40 ms of audio at a time, paced by the wall clock and never faster, so a
receiver's A/V sync holds and idle frames keep flowing when nothing is said.

`interrupt` stops speech within one frame: the stream drops what it holds, every sink drops
what it has queued, and any speech still being synthesized is discarded when it arrives.
A barge-in starts before that: the first sound like the user's voice ducks the avatar's
audio (`duck`) at once, and the avatar is cut off when the voice lasts long enough to be
speech, or comes back up, without a word lost, when it was a cough.

A session's mode says who answers: ``repeat`` speaks the user's words, ``chat`` answers them
through a language model (`ChatBrain`), ``realtime`` hands the microphone to a speech-to-speech
service (`RealtimeBrain`) and lip-syncs its audio as it streams in.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from rtlipsync.engines.base import EngineStream, LipSyncEngine
from rtlipsync.engines.cpu import CpuEngine
from rtlipsync.errors import InputError
from rtlipsync.face.avatar import Avatar
from rtlipsync.media.clock import Clock, MediaClock
from rtlipsync.media.frames import (
    FRAME_SAMPLES,
    SAMPLE_RATE,
    AVFrame,
    Phoneme,
    SpeechChunk,
    chunk_speech,
)
from rtlipsync.metrics import Metrics, Turn
from rtlipsync.speech.asr import ASRProvider
from rtlipsync.speech.chat import ChatBrain
from rtlipsync.speech.espeak import EspeakTTS
from rtlipsync.speech.tts import StreamingTTS, TTSError, TTSProvider
from rtlipsync.speech.vad import WINDOW, VoiceActivity
from rtlipsync.workers import WorkerCrashed

if TYPE_CHECKING:
    from rtlipsync.speech.realtime import RealtimeBrain

log = logging.getLogger(__name__)

MAX_TEXT = 2000  # characters a single say() accepts
MODES = ("repeat", "chat", "realtime")
NO_LLM = (
    "No language model is configured, so the avatar repeats your words "
    "(set llm.base_url or RTLIPSYNC_LLM_BASE_URL)"
)
MAX_PERSONA = 4000  # characters of a persona (system prompt)
MIC_QUIET = 0.5  # s without a microphone packet: the page turned its microphone off
DUCK_GAIN = 0.18  # the avatar's level (-15 dB) while a voice may be cutting in
RESUME_FRAMES = 3  # a ducked voice comes back up over this many frames (120 ms): no click
DUCK_FADE = SAMPLE_RATE // 100  # samples (10 ms) over which it goes down: quick, no click


def new_session_id() -> int:
    """A random six-digit session id (the seed's clients expect a number)."""
    return secrets.randbelow(900_000) + 100_000


class FrameSink(Protocol):
    """Anything that takes the session's frames: transports and recorders."""

    def put(self, frame: AVFrame) -> None: ...

    def flush(self) -> None:
        """Drop whatever is queued and not yet sent (an interruption)."""
        ...

    def close(self) -> None: ...


class Session:
    """A live session: engine stream + media clock + speech + sinks."""

    def __init__(
        self,
        avatar: Avatar,
        engine: LipSyncEngine | None = None,
        tts: TTSProvider | None = None,
        session_id: int | None = None,
        clock: Clock | None = None,
    ) -> None:
        """``clock`` paces the session's frames: the event loop's time by default, a
        `ManualClock` in tests that step the session frame by frame."""
        self.id = session_id if session_id is not None else new_session_id()
        self.avatar = avatar  # the session's own face
        self.engine = engine or CpuEngine()
        self.stream: EngineStream = self.engine.open_stream(avatar)
        self.showing = avatar  # what the idle loop plays now: the avatar or an action clip
        self.tts = tts or EspeakTTS()
        self._lock = threading.Lock()  # the stream is used from worker threads
        self._utterance = asyncio.Lock()  # one utterance is queued at a time, whole
        self._sinks: list[FrameSink] = []
        self._task: asyncio.Task[None] | None = None
        self._say_tasks: set[asyncio.Task[None]] = set()
        self._generation = 0  # bumped by interrupt: older speech is dropped
        self.chat: ChatBrain | None = None  # set when a language model is configured
        self.realtime: RealtimeBrain | None = None  # set in realtime mode
        self.carried: list[dict[str, str]] = []  # a conversation continued from elsewhere
        self.mode = "repeat"  # who answers the user: see MODES
        self.persona: str | None = None  # this session's system prompt, when it has its own
        self.vad_options: dict[str, float] = {}  # min_speech, min_silence for VoiceActivity
        self.metrics: Metrics | None = None  # the server's, when there is one
        self.turn: Turn | None = None  # the turn being answered
        self.asr: ASRProvider | None = None  # set when the session listens to a microphone
        self._vad: VoiceActivity | None = None
        self.heard = ""  # the last thing the user was heard to say
        self.listening = False  # a microphone is connected
        self.last_turn: dict[str, int] = {}  # its marks in ms, once its first frame went out
        self.notice = ""  # the last thing the user should be told (a failure, a fallback)
        self.speaking = False
        self.caption = ""  # the text of the utterance being heard now
        # Captions follow playback: (speech sample at which an utterance starts, its text).
        self._captions: deque[tuple[int, str]] = deque()
        self._queued_samples = 0  # speech samples pushed since the last interruption
        self._open_samples = 0  # samples of a streamed utterance not yet ended (push_stream)
        self._played_samples = 0  # speech samples sent since the last interruption
        self.last_index = -1
        self.history: deque[tuple[int, bool]] = deque(maxlen=500)  # (frame index, speaking)
        self._gain = 1.0  # the level the last frame's audio ended at
        self.ducked = False  # a voice may be cutting in: the avatar's audio is lowered
        self.on_frame: Callable[[AVFrame], None] | None = None
        self.clock = MediaClock(self._tick, clock)

    # -- lifecycle -----------------------------------------------------------------------
    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self.clock.run(), name=f"clock-{self.id}"
            )

    async def close(self) -> None:
        if self.realtime is not None:
            await self.realtime.close()
        for task in [*self._say_tasks, self._task]:
            if task is not None:
                task.cancel()
        for task in [*self._say_tasks, self._task]:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._task = None
        for sink in self._sinks:
            sink.close()
        self._sinks.clear()
        log.info("session closed", extra={"session": self.id})

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def add_sink(self, sink: FrameSink) -> None:
        self._sinks.append(sink)

    def remove_sink(self, sink: FrameSink) -> None:
        if sink in self._sinks:
            self._sinks.remove(sink)

    # -- speech ---------------------------------------------------------------------------
    def say(
        self,
        text: str,
        interrupt: bool = False,
        emotion: str | None = None,
        started: float | None = None,
    ) -> None:
        """Speak ``text`` after whatever is already queued (or instead of it).

        ``started`` is when the turn began (the monotonic time the user stopped speaking, for
        a spoken request), so the turn's latency counts recognition too; default: now.
        """
        text = text.strip()
        if not text:
            raise InputError("text is empty")
        if len(text) > MAX_TEXT:
            raise InputError(f"text is {len(text)} characters; the limit is {MAX_TEXT}")
        if interrupt:
            self.interrupt()
        self.begin_turn("repeat", started)
        self._track(self._say(text, emotion, self._generation))

    @property
    def generation(self) -> int:
        """Bumped by every interruption: work started before it must not speak."""
        return self._generation

    def set_notice(self, text: str) -> None:
        self.notice = text
        log.info("notice: %s", text, extra={"session": self.id})

    def converse(self, text: str, interrupt: bool = True, started: float | None = None) -> None:
        """Answer ``text`` in the session's mode: through the chat brain (the LLM), the
        realtime service, or by repeating it when no model is configured."""
        text = text.strip()
        if not text:
            raise InputError("text is empty")
        if len(text) > MAX_TEXT:
            raise InputError(f"text is {len(text)} characters; the limit is {MAX_TEXT}")
        if self.mode == "realtime" and self.realtime is not None and self.realtime.connected:
            self.realtime.send_text(text)
            return
        if self.chat is None:
            self.set_notice(NO_LLM)
            self.say(text, interrupt=interrupt, started=started)
            return
        if interrupt:
            self.interrupt()
        self.notice = ""
        self.begin_turn("chat", started)
        self._track(self.chat.reply(self, text, self._generation))

    def set_persona(self, text: str) -> None:
        """Who the avatar is (the LLM's system prompt, the realtime instructions), from the
        next reply on; "" goes back to the configured default."""
        text = text.strip()
        if len(text) > MAX_PERSONA:
            raise InputError(f"persona is {len(text)} characters; the limit is {MAX_PERSONA}")
        self.persona = text or None
        if self.chat is not None:
            self.chat.system_prompt = text or self.chat.llm.config.system_prompt
        if self.realtime is not None:
            self.realtime.set_instructions(text or self.realtime.config.instructions)

    def restore(self, memory: list[dict[str, str]]) -> None:
        """Go on with a conversation held elsewhere (a session whose host stopped): the chat
        brain remembers its turns, and so does the realtime service (now, or when realtime
        mode opens it); a session with neither has nothing to remember them by."""
        self.carried = list(memory)
        if self.chat is not None:
            self.chat.restore(memory)
        if self.realtime is not None:
            self.realtime.restore(memory)

    def continuation(self) -> dict[str, Any]:
        """What a new session needs to go on where this one is (the fields of an offer): its
        avatar, mode, persona and the conversation's memory. A cluster's gateway keeps it, so
        that a session whose worker died continues on another."""
        brain = self.realtime if self.mode == "realtime" else self.chat
        return {
            "avatar": self.avatar.name,
            "mode": self.mode,
            "persona": self.persona,
            "memory": list(brain.history) if brain is not None else [],
        }

    def listen(self, pcm: np.ndarray) -> None:
        """Take 16 kHz int16 microphone audio: speech interrupts the avatar (barge-in) once it
        has lasted the minimum duration, and each finished utterance becomes a turn.

        In realtime mode the audio goes to the service, whose own VAD starts the barge-in;
        the local VAD only confirms that it was speech and not a cough.
        """
        if self._vad is None:
            self._vad = VoiceActivity(**self.vad_options)
        vad = self._vad
        realtime = self.realtime if self.mode == "realtime" else None
        if realtime is not None:
            realtime.send_audio(pcm)
        for event in vad.push(pcm):
            if event.kind == "onset":
                if self.is_speaking:
                    self.duck(True)  # heard at once; cut off only once it is speech
            elif event.kind == "lapse":
                self.duck(False)  # a cough, not speech: the avatar carries on
            elif event.kind == "start":
                if realtime is not None:
                    realtime.local_speech(True)  # the service's own VAD decides the cut
                elif self.is_speaking:
                    log.info("barge-in: the user started speaking", extra={"session": self.id})
                    self.interrupt()
            elif event.kind == "end":
                self.duck(False)  # whatever plays next is heard in full
                if realtime is not None:
                    realtime.local_speech(False)
                elif event.audio is not None:
                    # The user stopped at event.at on the stream; the VAD knew it only now.
                    stopped = time.monotonic() - (vad.elapsed - event.at)
                    self._track(self._understand(event.audio, stopped))

    def microphone_stopped(self) -> None:
        """The microphone stopped sending (muted, or its track taken away, for `MIC_QUIET`
        seconds): the session is no longer listening, and an utterance in progress ends
        here, as if the user fell silent, instead of waiting for more. Every transport
        calls this, so what a silent microphone means is decided once."""
        self.listening = False
        vad = self._vad
        if vad is not None and vad.speaking:
            self.listen(np.zeros((vad.min_silence_windows + 1) * WINDOW, np.int16))

    async def _understand(self, audio: np.ndarray, stopped: float | None) -> None:
        asr = self.asr
        if asr is None:
            return
        try:
            text = await asyncio.to_thread(asr.transcribe, audio)
        except WorkerCrashed as exc:  # the recogniser's process died: this turn is lost
            log.warning("speech recognition failed: %s", exc, extra={"session": self.id})
            self.set_notice("speech recognition failed for that turn; please say it again")
            return
        if not text:
            return
        self.heard = text
        log.info("heard: %s", text, extra={"session": self.id})
        loop = asyncio.get_running_loop()
        if self.mode == "chat":
            loop.call_soon(lambda: self.converse(text, interrupt=True, started=stopped))
        else:
            loop.call_soon(lambda: self.say(text, started=stopped))

    def begin_turn(self, mode: str, started: float | None = None) -> None:
        """A new turn (say, converse, or a brain such as realtime's); a spoken one began when
        the user stopped, and was heard just now."""
        self.turn = Turn(mode) if started is None else Turn(mode, start=started)
        if started is not None:
            self.mark("heard")
        if self.metrics is not None:
            self.metrics.turns.labels(mode).inc()

    def mark(self, name: str) -> None:
        """Note a moment of the current turn (llm_first_token, tts_first_audio, first_frame)."""
        turn = self.turn
        if turn is None or (elapsed := turn.mark(name)) is None or self.metrics is None:
            return
        if name == "llm_first_token":
            self.metrics.llm_first_token.observe(elapsed)
        elif name == "provider_first_audio":
            self.metrics.provider_first_audio.labels(turn.mode).observe(elapsed)
        elif name == "first_frame":
            self.metrics.first_frame.labels(turn.mode).observe(elapsed)

    def observe_tts(self, seconds: float) -> None:
        if self.metrics is not None:
            self.metrics.tts_first_audio.observe(seconds)

    def _track(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._say_tasks.add(task)
        task.add_done_callback(self._say_tasks.discard)

    async def _say(self, text: str, emotion: str | None, generation: int) -> None:
        try:
            await self.speak(text, None, emotion, generation)
        except TTSError as exc:
            log.warning("TTS failed: %s", exc, extra={"session": self.id})
            self.set_notice(f"{exc}; the avatar could not speak")
        except Exception as exc:  # noqa: BLE001 - a provider's own failure mid-utterance
            log.warning("TTS failed: %r", exc, extra={"session": self.id})
            self.set_notice(f"the voice failed ({type(exc).__name__}); the avatar stopped there")

    async def speak(
        self, text: str, voice: str | None, emotion: str | None, generation: int
    ) -> bool:
        """Synthesize ``text`` and queue it; False if an interruption came first.

        A streaming TTS's audio is queued piece by piece as it arrives, so the lips start
        with the first words; utterances are queued whole and in order either way.
        """
        t0 = time.monotonic()
        if not isinstance(self.tts, StreamingTTS):
            speech = await asyncio.to_thread(self.tts.synthesize, text, voice)
            speech = speech.at_rate(SAMPLE_RATE)
            self._first_audio(t0)
            if generation != self._generation:
                return False  # interrupted while synthesizing
            async with self._utterance:
                self.push_speech(speech.pcm, speech.phonemes, text, emotion)
            return True
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue[np.ndarray | BaseException | None] = asyncio.Queue()
        stop = threading.Event()
        stream = self.tts.stream

        def work() -> None:  # a worker thread: the provider's client blocks
            try:
                for piece in stream(text, voice):
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
                    if stop.is_set():
                        return
            except BaseException as exc:  # noqa: BLE001 - handed to the session's task
                loop.call_soon_threadsafe(pieces.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(pieces.put_nowait, None)

        worker = loop.run_in_executor(None, work)
        started = False
        try:
            async with self._utterance:
                while (piece := await pieces.get()) is not None:
                    if isinstance(piece, BaseException):
                        raise piece
                    if generation != self._generation:
                        return False
                    words = None
                    if not started:
                        started = True
                        words = text  # the words this audio says, for the lips to align
                        self._first_audio(t0)
                        self.caption_from(self.queued_samples, text)
                    self.push_stream(piece, emotion=emotion, text=words)
                return started
        finally:
            stop.set()
            if started and generation == self._generation:
                self.push_stream(np.zeros(0, np.int16), end=True)
            worker.add_done_callback(lambda f: f.exception())

    def _first_audio(self, t0: float) -> None:
        if self.turn is not None and "tts_first_audio" not in self.turn.marks:
            self.observe_tts(time.monotonic() - t0)
        self.mark("tts_first_audio")

    def push_speech(
        self,
        pcm: np.ndarray,
        phonemes: Sequence[Phoneme] = (),
        text: str | None = None,
        emotion: str | None = None,
    ) -> None:
        """Queue one utterance of 16 kHz int16 PCM (with optional phoneme timings)."""
        with self._lock:
            # A whole utterance at once: 250 ms chunks give the same frames as 20 ms ones.
            chunks = chunk_speech(
                pcm, tuple(phonemes), SAMPLE_RATE // 4, text=text, emotion=emotion
            )
            for chunk in chunks:
                self.stream.push(chunk)
            if text:
                self._captions.append((self._queued_samples, text))
            # The engine pads each utterance to whole frames.
            self._queued_samples += -(-len(pcm) // FRAME_SAMPLES) * FRAME_SAMPLES
        log.info("speech queued: %.2f s", len(pcm) / SAMPLE_RATE, extra={"session": self.id})

    def push_stream(
        self,
        pcm: np.ndarray,
        end: bool = False,
        emotion: str | None = None,
        text: str | None = None,
    ) -> None:
        """Queue speech that arrives in pieces (a realtime reply, a streaming TTS): no padding
        between pieces, and ``end`` closes the utterance so the engine flushes its look-ahead.

        ``text`` is more of the words being said, in order, as they become known (the whole
        sentence a TTS was given, or a transcript delta): the engine aligns them to the audio.
        """
        with self._lock:
            if len(pcm) or text:
                chunk = SpeechChunk(np.asarray(pcm, np.int16), text=text, emotion=emotion)
                self.stream.push(chunk)
                self._open_samples += len(pcm)
            if end:
                self.stream.push(SpeechChunk(np.zeros(0, np.int16), end_of_utterance=True))
                padded = -(-self._open_samples // FRAME_SAMPLES) * FRAME_SAMPLES
                self._queued_samples += padded
                self._open_samples = 0

    @property
    def queued_samples(self) -> int:
        """Speech samples queued since the last interruption (an open stream included)."""
        return self._queued_samples + self._open_samples

    @property
    def played_samples(self) -> int:
        """Speech samples handed to the sinks since the last interruption."""
        return self._played_samples

    def caption_from(self, sample: int, text: str) -> None:
        """Show ``text`` once playback reaches ``sample`` (see `queued_samples`), or now if it
        already has; a later call for the same sample updates the text (a growing transcript).
        """
        with self._lock:
            if sample < self._played_samples:
                self.caption = text
                return
            for i, (at, _) in enumerate(self._captions):
                if at == sample:
                    self._captions[i] = (sample, text)
                    return
            self._captions.append((sample, text))

    def duck(self, on: bool) -> None:
        """Lower the avatar's voice now (a voice may be cutting in), or bring it back. Its
        speech plays on underneath, so nothing is lost if it was not a barge-in."""
        if on != self.ducked:
            self.ducked = on
            log.info("%s", "ducked" if on else "unducked", extra={"session": self.id})

    def _level(self, frame: AVFrame) -> AVFrame:
        """The frame with its audio at the session's level, faded from the last frame's level
        so that a duck is heard within 10 ms of the frame's start and nothing clicks."""
        target = DUCK_GAIN if self.ducked else 1.0
        start = self._gain
        if start == target == 1.0:
            return frame
        n = len(frame.audio)
        if target > start:  # back up gently, over a few frames
            target = min(target, start + (1.0 - DUCK_GAIN) / RESUME_FRAMES)
            ramp = np.linspace(start, target, n, endpoint=False, dtype=np.float32)
        else:  # down at once: a 10 ms fade, then the lower level
            ramp = np.full(n, target, np.float32)
            fade = min(n, DUCK_FADE)
            ramp[:fade] = np.linspace(start, target, fade, endpoint=False, dtype=np.float32)
        self._gain = target
        audio = (frame.audio * ramp).astype(np.int16)
        return replace(frame, audio=audio)

    def interrupt(self) -> int:
        """Stop speaking now; returns the index of the last frame that may still carry speech."""
        if self.realtime is not None:
            self.realtime.stop_reply()  # before the counters of what was played are reset
        self.ducked = False  # what is said next is heard at full level
        self._generation += 1
        for task in list(self._say_tasks):  # a reply being generated stops too (LLM, TTS)
            task.cancel()
        with self._lock:
            self.stream.reset()
            self._captions.clear()
            self._queued_samples = self._played_samples = self._open_samples = 0
        for sink in self._sinks:
            sink.flush()
        log.info("interrupted at frame %d", self.last_index, extra={"session": self.id})
        return self.last_index

    def show(self, clip: Avatar | None) -> None:
        """Play ``clip`` (an action clip, prepared like any avatar) from its first frame, or
        go back to the session's own avatar with None. Speech in progress is dropped."""
        target = clip or self.avatar
        if target.size != self.avatar.size:
            w, h = self.avatar.size
            raise InputError(
                f"clip {target.name!r} is {target.size[0]}x{target.size[1]}; it must match "
                f"the avatar's {w}x{h}"
            )
        self._generation += 1
        with self._lock:
            self.stream = self.engine.open_stream(target)
            self.showing = target
        for sink in self._sinks:
            sink.flush()
        log.info("showing %s", target.name, extra={"session": self.id})

    @property
    def is_speaking(self) -> bool:
        return self.speaking or self.stream.pending > 0 or bool(self._say_tasks)

    # -- the clock ------------------------------------------------------------------------
    def _next_frame(self) -> AVFrame:
        with self._lock:
            frame = next(iter(self.stream.frames()), None)
            if frame is None:
                frame = self.stream.idle()
        return frame

    async def _tick(self, k: int) -> None:
        """One frame of the media clock: the next frame, at the session's level, to the sinks.

        A failure here would stop the clock, and with it the session's picture and sound: an
        engine that fails on a frame ends that reply (the idle frame goes out instead), and a
        sink that fails (a recording on a full disk) is dropped; the user is told either way.
        """
        try:
            frame = await asyncio.to_thread(self._next_frame)
        except Exception:
            log.exception("the lip-sync engine failed on frame %d", k, extra={"session": self.id})
            self.interrupt()
            self.set_notice("the lip-sync engine failed; the avatar stopped that reply")
            frame = await asyncio.to_thread(self._next_frame)
        frame = self._level(frame)
        frame.index = k  # the session's timeline, whichever stream made the frame
        self.speaking = frame.speaking
        if self.metrics is not None:
            self.metrics.frames.inc()
        if frame.speaking:
            if self.turn is not None and "first_frame" not in self.turn.marks:
                self.mark("first_frame")
                self.last_turn = self.turn.as_ms()
                log.info(
                    "turn %s: %s ms", self.turn.mode, self.last_turn, extra={"session": self.id}
                )
            with self._lock:
                self._played_samples += FRAME_SAMPLES
                while self._captions and self._captions[0][0] < self._played_samples:
                    self.caption = self._captions.popleft()[1]
        self.last_index = frame.index
        self.history.append((frame.index, frame.speaking))
        for sink in list(self._sinks):
            try:
                sink.put(frame)
            except Exception as exc:  # noqa: BLE001 - that sink's end, not the session's
                self.remove_sink(sink)
                what = getattr(sink, "name", type(sink).__name__)
                log.warning("%s failed: %s", what, exc, extra={"session": self.id})
                self.set_notice(f"{what} stopped: {exc}")
        if self.on_frame is not None:
            self.on_frame(frame)
