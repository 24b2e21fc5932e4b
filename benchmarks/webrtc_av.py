"""Live-session figures at a real aiortc receiver over loopback.

1. A/V offset: a marker stream goes through the real session clock and WebRTC transport:
   every second one frame is white and carries a 1 kHz click in its own 40 ms of audio. At
   the receiver we take each flash's and each click's time two ways: presentation (the RTP
   timestamp mapped to the sender's clock through its RTCP sender reports: what a browser's
   lip-sync uses, and the goal's measure) and arrival (when aiortc's recv() returns; its
   audio jitter buffer holds 4 packets before releasing any, so arrival shows that buffer
   too). Offset = audio time - video time.
2. Text in -> first lip-synced frame on the wire: POST /human, then the first received audio
   packet with speech energy and the first received video frame whose mouth has moved.

    python benchmarks/webrtc_av.py [--markers 15] [--turns 20]
Goals: |A/V offset| <= 20 ms; text -> first frame <= 100 ms p50.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx
import numpy as np
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.rtcrtpreceiver import RTCRtpReceiver

from rtlipsync.face.avatar import ensure_default_avatar, load_avatar
from rtlipsync.media.frames import FRAME_SAMPLES, SAMPLE_RATE, AVFrame
from rtlipsync.server import ServerConfig
from rtlipsync.testing.serving import serving

from _common import machine

# RTCP sender reports seen by the receiver: ssrc -> [(ntp seconds, rtp timestamp)].
SENDER_REPORTS: dict[int, list[tuple[float, int]]] = {}
_original_rtcp = RTCRtpReceiver._handle_rtcp_packet


async def _record_sr(self, packet):  # noqa: ANN001 - aiortc's RTCP packet
    if type(packet).__name__ == "RtcpSrPacket":
        ntp = packet.sender_info.ntp_timestamp / 2**32
        SENDER_REPORTS.setdefault(packet.ssrc, []).append((ntp, packet.sender_info.rtp_timestamp))
    return await _original_rtcp(self, packet)


RTCRtpReceiver._handle_rtcp_packet = _record_sr


class MarkerStream:
    """An EngineStream that shows a flash and plays a click in the same frame, once a second."""

    lookahead = 0.0
    pending = 0.0

    def __init__(self, avatar) -> None:  # noqa: ANN001
        self.dark = np.full_like(avatar.frames[0], 20)
        self.light = np.full_like(avatar.frames[0], 235)
        t = np.arange(FRAME_SAMPLES) / SAMPLE_RATE
        self.click = (0.5 * 32767 * np.sin(2 * np.pi * 1000 * t)).astype(np.int16)
        self.silence = np.zeros(FRAME_SAMPLES, np.int16)
        self.index = 0

    def push(self, chunk) -> None:  # noqa: ANN001
        pass

    def frames(self):  # noqa: ANN201
        return iter(())

    def reset(self) -> None:
        pass

    def idle(self) -> AVFrame:
        marker = self.index % 25 == 12
        frame = AVFrame(
            self.light if marker else self.dark, self.click if marker else self.silence, self.index
        )
        self.index += 1
        return frame


class MarkerEngine:
    name = "markers"

    def prepare(self, avatar, **options) -> None:  # noqa: ANN001, ANN003
        pass

    def open_stream(self, avatar) -> MarkerStream:  # noqa: ANN001
        return MarkerStream(avatar)


class Receiver:
    def __init__(self) -> None:
        self.pc = RTCPeerConnection()
        self.video: list[tuple[float, int, float]] = []  # arrival, rtp ts, brightness
        self.audio: list[tuple[float, int, float]] = []  # arrival, rtp ts, rms
        self.mouth_box: tuple[int, int, int, int] | None = None
        self.mouth: list[tuple[float, np.ndarray]] = []
        self.tasks: list[asyncio.Task] = []

    async def connect(self, base: str) -> int:
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def on_track(track) -> None:  # noqa: ANN001
            self.tasks.append(asyncio.ensure_future(self.pull(track)))

        await self.pc.setLocalDescription(await self.pc.createOffer())
        async with httpx.AsyncClient() as client:
            r = await client.post(
                f"{base}/offer", json={"sdp": self.pc.localDescription.sdp, "type": "offer"}
            )
        answer = r.json()
        await self.pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        return answer["sessionid"]

    async def pull(self, track) -> None:  # noqa: ANN001
        try:
            while True:
                frame = await track.recv()
                now = time.monotonic()
                if track.kind == "video":
                    img = frame.to_ndarray(format="bgr24")
                    self.video.append((now, frame.pts, float(img.mean())))
                    if self.mouth_box is not None:
                        x0, y0, x1, y1 = self.mouth_box
                        self.mouth.append((now, img[y0:y1, x0:x1].astype(np.float32)))
                else:
                    pcm = frame.to_ndarray().astype(np.float64)
                    self.audio.append((now, frame.pts, float(np.sqrt(np.mean(pcm**2)))))
        except Exception:  # noqa: BLE001 - the track ended
            return

    async def close(self) -> None:
        await self.pc.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


def _ssrcs(pc: RTCPeerConnection) -> dict[str, tuple[int, int]]:
    """Per kind, the media SSRC seen and the RTP timestamp aiortc's receiver rebased frame
    pts on (both kept privately by aiortc: frame.pts = RTP timestamp - origin)."""
    out = {}
    for tr in pc.getTransceivers():
        streams = getattr(tr.receiver, "_RTCRtpReceiver__remote_streams", {})
        mapper = getattr(tr.receiver, "_RTCRtpReceiver__timestamp_mapper", None)
        if streams and mapper is not None and mapper._origin is not None:
            out[tr.kind] = (next(iter(streams)), mapper._origin)
    return out


def to_sender_clock(reports: list[tuple[float, int]], rtp: int, rate: int) -> float:
    ntp, ts = reports[-1]
    diff = (rtp - ts) & 0xFFFFFFFF
    if diff > 2**31:
        diff -= 2**32
    return ntp + diff / rate


async def measure_av(base: str, markers: int) -> dict[str, list[float]]:
    rx = Receiver()
    await rx.connect(base)
    await asyncio.sleep(markers + 2.5)
    ssrc = _ssrcs(rx.pc)
    await rx.close()
    flashes = [x for x in rx.video if x[2] > 128]
    clicks = [x for x in rx.audio if x[2] > 3000]

    # One event per marker second: the first flash/click of each burst.
    def firsts(events):  # noqa: ANN001, ANN202
        out, last = [], -10.0
        for e in events:
            if e[0] - last > 0.5:
                out.append(e)
            last = e[0]
        return out

    flashes, clicks = firsts(flashes), firsts(clicks)
    arrival = [1000 * (c[0] - f[0]) for f, c in zip(flashes, clicks, strict=False)][1:]
    presentation = []
    if "video" in ssrc and "audio" in ssrc:
        (vs, vo), (as_, ao) = ssrc["video"], ssrc["audio"]
        if SENDER_REPORTS.get(vs) and SENDER_REPORTS.get(as_):
            for f, c in list(zip(flashes, clicks, strict=False))[1:]:
                tv = to_sender_clock(SENDER_REPORTS[vs], (f[1] + vo) & 0xFFFFFFFF, 90_000)
                ta = to_sender_clock(SENDER_REPORTS[as_], (c[1] + ao) & 0xFFFFFFFF, 48_000)
                presentation.append(1000 * (ta - tv))
    return {"arrival": arrival, "presentation": presentation, "events": [len(flashes), len(clicks)]}


async def measure_latency(base: str, turns: int, avatar) -> list[float]:  # noqa: ANN001
    pts = avatar.landmarks[0]
    x0, y0 = (pts[[61, 13]].min(axis=0) - 4).astype(int)
    x1, y1 = (pts[[291, 14, 17]].max(axis=0) + 4).astype(int)
    rx = Receiver()
    rx.mouth_box = (x0, y0, x1, y1)
    sid = await rx.connect(base)
    await asyncio.sleep(2.0)
    latencies = []
    async with httpx.AsyncClient(base_url=base) as http:
        for _ in range(turns):
            await http.post("/interrupt_talk", json={"sessionid": sid})
            await asyncio.sleep(0.6)
            ref = rx.mouth[-1][1]
            mark_a, mark_v = len(rx.audio), len(rx.mouth)
            t0 = time.monotonic()
            await http.post(
                "/human", json={"sessionid": sid, "text": "Hello, how are you doing today?"}
            )
            deadline = t0 + 3
            t_audio = t_video = None
            while time.monotonic() < deadline and (t_audio is None or t_video is None):
                await asyncio.sleep(0.005)
                if t_audio is None:
                    hit = next((a for a in rx.audio[mark_a:] if a[2] > 300), None)
                    t_audio = hit[0] if hit else None
                if t_video is None:
                    hit = next(
                        (m for m in rx.mouth[mark_v:] if np.abs(m[1] - ref).mean() > 4), None
                    )
                    t_video = hit[0] if hit else None
            if t_audio is not None and t_video is not None:
                latencies.append(1000 * (min(t_audio, t_video) - t0))
    await rx.close()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--markers", type=int, default=15)
    parser.add_argument("--turns", type=int, default=20)
    args = parser.parse_args()
    ensure_default_avatar()
    avatar = load_avatar("default")
    print(machine())

    with serving(ServerConfig(engine=MarkerEngine)) as base:
        av = asyncio.run(measure_av(base, args.markers))
    notes = {
        "presentation": "(goal <= 20 ms)",
        "arrival": "(includes aiortc's 4-packet audio prefetch; not the goal's measure)",
    }
    for kind in ("presentation", "arrival"):
        v = av[kind]
        if v:
            print(
                f"A/V offset ({kind}, audio - video): median {statistics.median(v):+.1f} ms, "
                f"max |.| {max(abs(x) for x in v):.1f} ms over {len(v)} markers  {notes[kind]}"
            )
        else:
            print(f"A/V offset ({kind}): no sender reports or markers seen {av['events']}")
    with serving() as base:
        lat = asyncio.run(measure_latency(base, args.turns, avatar))
    lat.sort()
    print(
        f"text -> first lip-synced frame received: p50 {statistics.median(lat):.0f} ms, "
        f"p90 {lat[int(0.9 * (len(lat) - 1))]:.0f} ms over {len(lat)} turns  (goal <= 100 ms p50)"
    )


if __name__ == "__main__":
    main()
