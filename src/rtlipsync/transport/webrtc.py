"""WebRTC through aiortc: one peer's connection to its session, both ways (`WebRTCPeer`).

Out: our own 25 fps video track and a 20 ms audio track. aiortc's stock `VideoStreamTrack`
paces at 30 fps, so we pace ourselves: both tracks are fed by the session's one clock
through small queues, and their timestamps come from the frame index, so audio and video
share one timeline and the browser's RTP/RTCP sync holds. A slow peer loses the oldest
queued frames, never the timeline. VP8 frames leave at an even cadence (`PacedVp8Encoder`).
Beside them, an ``events`` data channel (opened by the peer) carries what each frame changes
on the page (`StateMessages`).

In: the peer's microphone, resampled to 16 kHz for the session's listener (`listen`).

No STUN server is contacted unless configured (`ice_servers`); on a LAN or loopback, host
candidates are enough, and TURN servers can be given for NAT traversal.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import fractions
import hashlib
import hmac
import json
import logging
import multiprocessing
import time
from collections import deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import av
import cv2
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
    rtcrtpsender,
)
from aiortc.codecs.vpx import Vp8Encoder, number_of_threads
from aiortc.jitterbuffer import JitterBuffer
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from rtlipsync.media.frames import FPS, PACKET_SAMPLES, SAMPLE_RATE, AVFrame, StateMessages
from rtlipsync.session import MIC_QUIET

if TYPE_CHECKING:
    from rtlipsync.session import Session

log = logging.getLogger(__name__)

VIDEO_CLOCK = 90_000
VIDEO_TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)


class _QueuedTrack(MediaStreamTrack):
    """A track whose `recv` waits for the next item the session clock put in its queue."""

    def __init__(self, maxlen: int) -> None:
        super().__init__()
        self._items: deque[object] = deque(maxlen=maxlen)  # full: the oldest is dropped
        self._ready = asyncio.Event()

    def feed(self, item: object) -> None:
        self._items.append(item)
        self._ready.set()

    def flush(self) -> None:
        self._items.clear()

    async def _next(self) -> object:
        while not self._items:
            self._ready.clear()
            await self._ready.wait()
        return self._items.popleft()


class AvatarVideoTrack(_QueuedTrack):
    kind = "video"

    def __init__(self) -> None:
        super().__init__(maxlen=3)

    async def recv(self) -> av.VideoFrame:
        index, image = await self._next()  # type: ignore[misc]
        # The encoders want I420: OpenCV converts ~5x faster than the encoder's own swscale
        # path (VP8 at 512x512: 3.9 instead of 5.6 ms of CPU per frame). Done here, off the
        # event loop, and only for frames actually sent (a slow peer's dropped ones are not).
        yuv = await asyncio.to_thread(cv2.cvtColor, image, cv2.COLOR_BGR2YUV_I420)
        frame = av.VideoFrame.from_ndarray(yuv, format="yuv420p")
        frame.pts = index * (VIDEO_CLOCK // FPS)
        frame.time_base = VIDEO_TIME_BASE
        return frame


PACE_SLACK = 0.020  # s a frame may take beyond the quickest one before it leaves late
PACE_WINDOW = 50  # frames (2 s) over which the quickest frame is remembered


class PacedVp8Encoder(Vp8Encoder):
    """aiortc's VP8 encoder, letting each frame go at an even cadence, without a denoiser.

    A frame's way to the wire (the clock's tick, rendering, the I420 conversion, a hop to a
    worker thread, the encode itself) takes from 3 to over 15 ms, different for every frame;
    sent the moment it is encoded, that difference is the viewer's jitter (p99 gap between
    frames 46-47 ms on an idle 2-core server). Here each encoded frame waits (in its encoder
    thread, off the event loop) until its media time plus `PACE_SLACK` after the quickest
    frame of the last two seconds, so frames leave as evenly as they were made (p99 41-43
    ms, same machine) for at most `PACE_SLACK` of added delay. A frame later than that goes
    at once; a stall longer than the window is forgotten after it. ``clock`` and ``sleep``
    are injectable so tests can step time.

    The codec is opened with aiortc's settings but libvpx's temporal denoiser off: it is
    there for camera noise, our frames are rendered from a prepared avatar, and it cost a
    third of each frame's encode (2.7 against 1.9 ms at 512x512, same stream size).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        self._clock, self._sleep = clock, sleep
        self._offsets: deque[float] = deque(maxlen=PACE_WINDOW)  # arrival - media time

    def encode(self, frame: av.VideoFrame, force_keyframe: bool = False) -> tuple[list[bytes], int]:
        media = float(frame.pts * frame.time_base)  # (aiortc needs it for the RTP time)
        arrived = self._clock()
        codec = self.codec
        # Opened here whenever aiortc would open it (first frame, new size, bitrate moved by
        # over 10 %), so aiortc finds ours and keeps it.
        if (
            codec is None
            or (frame.width, frame.height) != (codec.width, codec.height)
            or abs(self.target_bitrate - codec.bit_rate) / codec.bit_rate > 0.1
        ):
            self.codec = self.open_codec(frame.width, frame.height)
        out = super().encode(frame, force_keyframe)
        self._offsets.append(arrived - media)
        wait = min(self._offsets) + media + PACE_SLACK - self._clock()
        if wait > 0:
            self._sleep(wait)
        return out

    def open_codec(self, width: int, height: int) -> av.video.codeccontext.VideoCodecContext:
        """A libvpx encoder as aiortc 1.x configures it (real-time CBR), denoiser off."""
        codec = av.CodecContext.create("libvpx", "w")
        codec.width, codec.height = width, height
        codec.bit_rate = bitrate = self.target_bitrate
        codec.pix_fmt = "yuv420p"
        codec.gop_size = 3000  # keyframes only when the receiver asks
        codec.qmin, codec.qmax = 2, 56
        codec.options = {
            "bufsize": str(bitrate),
            "cpu-used": "-6",
            "deadline": "realtime",
            "lag-in-frames": "0",
            "minrate": str(bitrate),
            "maxrate": str(bitrate),
            "noise-sensitivity": "0",
            "overshoot-pct": "15",
            "partitions": "0",
            "static-thresh": "1",
            "undershoot-pct": "100",
        }
        codec.thread_count = number_of_threads(width * height, multiprocessing.cpu_count())
        return codec


_aiortc_get_encoder = rtcrtpsender.get_encoder


def _get_encoder(codec: RTCRtpCodecParameters) -> Any:
    """aiortc's choice of encoder, with VP8 paced: aiortc has no registry of encoders, and
    its sender looks this function up by name in its own module, so that name is replaced
    (once, when this module is imported)."""
    if codec.mimeType.lower() == "video/vp8":
        return PacedVp8Encoder()
    return _aiortc_get_encoder(codec)


rtcrtpsender.get_encoder = _get_encoder


def media_pool(sessions: int) -> ThreadPoolExecutor:
    """The event loop's default pool for ``sessions`` live sessions. Each keeps worker threads
    busy every frame: its frame, the I420 conversion, Opus, and VP8, whose thread also holds
    each frame until its even departure (`PacedVp8Encoder`: the encode plus up to its
    `PACE_SLACK`). asyncio's default (cores + 4 threads) would be full at a handful."""
    return ThreadPoolExecutor(8 + 3 * sessions, thread_name_prefix="asyncio")


class AvatarAudioTrack(_QueuedTrack):
    kind = "audio"

    def __init__(self) -> None:
        super().__init__(maxlen=6)

    async def recv(self) -> av.AudioFrame:
        pts, pcm = await self._next()  # type: ignore[misc]
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = pts
        frame.time_base = AUDIO_TIME_BASE
        return frame


EVENTS_CHANNEL = "events"  # the data channel a peer opens to hear `StateMessages`


class WebRTCSink:
    """Feeds one peer's video and audio tracks from a session (a `FrameSink`), and its
    ``events`` data channel, once the peer opens one, with the state each frame changes."""

    def __init__(self, state: StateMessages | None = None) -> None:
        self.video = AvatarVideoTrack()
        self.audio = AvatarAudioTrack()
        self.state = state
        self.events: RTCDataChannel | None = None

    def put(self, frame: AVFrame) -> None:
        self.video.feed((frame.index, frame.image))
        base = frame.index * 2 * PACKET_SAMPLES
        for k in range(2):
            packet = frame.audio[k * PACKET_SAMPLES : (k + 1) * PACKET_SAMPLES]
            self.audio.feed((base + k * PACKET_SAMPLES, np.ascontiguousarray(packet)))
        if self.state is not None and self.events is not None:
            message = self.state.after(frame)
            if message is not None and self.events.readyState == "open":
                self.events.send(json.dumps(message))

    def flush(self) -> None:
        self.video.flush()
        self.audio.flush()

    def close(self) -> None:
        self.video.stop()
        self.audio.stop()


# The microphone feeds a VAD and a recogniser, not a loudspeaker: it needs no reordering
# cushion. aiortc holds each received audio packet until four more arrive (80 ms), which
# delayed every barge-in and every end of turn by that much; one is enough to deliver in
# order on a LAN, and a packet that comes later than that is dropped, which the VAD and the
# recogniser tolerate.
MIC_PREFETCH = 1


def listen_promptly(pc: RTCPeerConnection, track: MediaStreamTrack) -> bool:
    """Deliver the peer's microphone ``track`` after one packet of reordering wait instead
    of aiortc's four; False when this aiortc keeps its buffer elsewhere (then nothing
    changes but the delay)."""
    for transceiver in pc.getTransceivers():
        receiver = transceiver.receiver
        if receiver.track is track and hasattr(receiver, _JITTER):
            setattr(receiver, _JITTER, JitterBuffer(capacity=16, prefetch=MIC_PREFETCH))
            return True
    return False


_JITTER = "_RTCRtpReceiver__jitter_buffer"  # aiortc 1.x: RTCRtpReceiver.__jitter_buffer


TURN_TTL = 86_400  # s a TURN server's time-limited credential lasts, unless its entry says


def ice_credentials(
    ice_servers: list[dict[str, object]] | None, now: float | None = None
) -> list[dict[str, object]]:
    """The configured ICE servers as both ends use them: ``urls`` with ``username`` and
    ``credential`` as given, or, for an entry with an ``auth_secret`` (coturn's
    ``static-auth-secret``), a credential made now that expires after ``ttl`` s: username
    ``EXPIRY:rtlipsync``, credential base64(HMAC-SHA1(secret, username)), the TURN REST
    convention. So the page can be given a TURN credential that stops working by itself."""
    now = time.time() if now is None else now
    servers = []
    for entry in ice_servers or []:
        server: dict[str, object] = {"urls": entry["urls"]}
        secret = entry.get("auth_secret")
        if isinstance(secret, str) and secret:
            ttl = entry.get("ttl", TURN_TTL)
            username = f"{int(now) + int(ttl)}:rtlipsync"  # type: ignore[call-overload]
            digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
            server.update(username=username, credential=base64.b64encode(digest).decode())
        else:
            for key in ("username", "credential"):
                if entry.get(key) is not None:
                    server[key] = entry[key]
        servers.append(server)
    return servers


def rtc_configuration(ice_servers: list[dict[str, object]] | None = None) -> RTCConfiguration:
    """ICE servers from config: ``[{"urls": "turn:host:3478", "username": .., "credential": ..}]``
    (or ``auth_secret`` in place of the two: see `ice_credentials`).

    Empty by default: no public STUN server is contacted unless the operator asks for one.
    """
    servers = [
        RTCIceServer(
            urls=s["urls"],  # type: ignore[arg-type]
            username=s.get("username"),  # type: ignore[arg-type]
            credential=s.get("credential"),  # type: ignore[arg-type]
        )
        for s in ice_credentials(ice_servers)
    ]
    return RTCConfiguration(iceServers=servers)


async def listen(track: MediaStreamTrack, session: Session) -> None:
    """Feed a peer's microphone to its session, resampled to 16 kHz mono.

    The page keeps its audio sender for the whole session and gives it a track only while
    the microphone is on (so it can be switched live, without renegotiating): ``listening``
    says whether packets are arriving, and an utterance cut short by the switch ends there.
    """
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    try:
        while True:
            try:
                frame = await asyncio.wait_for(track.recv(), MIC_QUIET)
            except TimeoutError:
                if session.listening:
                    session.microphone_stopped()
                continue
            session.listening = True
            for out in resampler.resample(frame):
                session.listen(out.to_ndarray().reshape(-1))
    except (MediaStreamError, asyncio.CancelledError):
        return
    finally:
        session.listening = False


class NegotiationFailed(ValueError):
    """The peer's offer could not be applied or answered (the message says what aiortc said)."""


class WebRTCPeer:
    """One peer's WebRTC connection to its session, both ways, and its signalling.

    `answer` applies the peer's offer: the avatar's video and audio go out through a
    `WebRTCSink`, a microphone it sends comes in through `listen`, and an ``events`` data
    channel it opens gets the page's state. `start` joins the session's clock and watches
    the peer; ``on_gone`` is called once when the connection fails or closes, or when the
    peer falls silent for ``peer_timeout`` s (network gone, laptop shut).
    """

    def __init__(
        self,
        session: Session,
        on_gone: Callable[[], Awaitable[object]],
        ice_servers: list[dict[str, object]] | None = None,
        peer_timeout: float = 10.0,
    ) -> None:
        self.session = session
        self.pc = RTCPeerConnection(rtc_configuration(ice_servers))
        self.sink = WebRTCSink(StateMessages(lambda: session.caption))
        self.peer_timeout = peer_timeout
        self._on_gone = on_gone
        self._gone = False
        self._tasks: list[asyncio.Future[Any]] = []  # the microphone's listener, the watchdog

    async def answer(self, sdp: str) -> RTCSessionDescription:
        """Our answer to the peer's SDP offer; `NegotiationFailed` (and nothing left open)
        when the two do not negotiate."""
        pc, session, sink = self.pc, self.session, self.sink

        @pc.on("track")  # fired while the offer is applied: registered before it
        def on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":  # the user's microphone
                listen_promptly(pc, track)
                self._tasks.append(asyncio.ensure_future(listen(track, session)))

        @pc.on("datachannel")
        def on_channel(channel: RTCDataChannel) -> None:
            if channel.label == EVENTS_CHANNEL:
                sink.events = channel

        try:
            pc.addTrack(sink.video)
            pc.addTrack(sink.audio)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=sdp, type="offer"))
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds on a bad SDP
            with contextlib.suppress(Exception):  # (half-applied, its close can fail too)
                await pc.close()
            raise NegotiationFailed(str(exc)) from exc

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            log.info("peer connection %s", pc.connectionState, extra={"session": session.id})
            if pc.connectionState in ("failed", "closed"):
                await self._gone_once()

        return pc.localDescription

    def start(self) -> None:
        """Send the session's frames to the peer, and watch that it is still there."""
        self.session.add_sink(self.sink)
        self._tasks.append(asyncio.get_running_loop().create_task(self._watch()))

    async def _gone_once(self) -> None:
        if not self._gone:
            self._gone = True
            await self._on_gone()

    async def _watch(self) -> None:
        """Call ``on_gone`` when the peer went silent: no RTCP receiver report (browsers
        send one about every second) for ``peer_timeout``; ICE consent alone takes 30 s."""
        loop = asyncio.get_running_loop()
        heard = loop.time()  # the peer gets peer_timeout to connect and report
        last_reports: dict[int, object] = {}  # per sender: the timestamp of its last report
        while True:
            await asyncio.sleep(1.0)
            for sender in self.pc.getSenders():
                try:
                    report = await sender.getStats()
                except Exception:  # noqa: BLE001 - a dying transport: judged by silence
                    continue
                for stats in report.values():
                    if stats.type == "remote-inbound-rtp":
                        if last_reports.get(id(sender)) != stats.timestamp:
                            last_reports[id(sender)] = stats.timestamp
                            heard = loop.time()
            if loop.time() - heard > self.peer_timeout:
                log.info(
                    "peer silent for %.0f s: closing",
                    loop.time() - heard,
                    extra={"session": self.session.id},
                )
                await self._gone_once()  # (its close leaves this task to end by itself)
                return

    async def close(self) -> None:
        """Close the connection and stop its listener and watchdog (the session is not
        closed here: its owner does that)."""
        self._gone = True
        current = asyncio.current_task()
        tasks = [t for t in self._tasks if t is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.pc.close()
