"""The WebRTC transport's own parts, on a stepped clock (the peers are tested in
test_server, test_voice and test_page)."""

from __future__ import annotations

import fractions

import av
import numpy as np
from aiortc import rtcrtpsender
from aiortc.codecs.vpx import vp8_depayload
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from rtlipsync.transport.webrtc import PACE_SLACK, PACE_WINDOW, PacedVp8Encoder

TIME_BASE = fractions.Fraction(1, 90_000)


class SteppedClock:
    """Time that moves only when told, or when slept through."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds > 0
        self.now += seconds


def frame(index: int) -> av.VideoFrame:
    image = np.full((64, 64, 3), (index * 7) % 255, np.uint8)
    out = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    out.pts = index * 3600
    out.time_base = TIME_BASE
    return out


def released(
    encoder: PacedVp8Encoder, clock: SteppedClock, arrivals_ms: list[float]
) -> list[float]:
    """When each frame leaves the encoder, if frame k reaches it ``arrivals_ms[k]`` after its
    media time (times in ms after the first frame's media time)."""
    start = clock.now
    out = []
    for k, late in enumerate(arrivals_ms):
        clock.now = max(clock.now, start + (k * 40 + late) / 1000)
        payloads, _ = encoder.encode(frame(k))
        assert payloads  # it still encodes: the pacing only waits
        out.append((clock.now - start) * 1000)
    return out


def test_vp8_frames_leave_evenly_whatever_their_way_took() -> None:
    clock = SteppedClock()
    encoder = PacedVp8Encoder(clock=clock, sleep=clock.sleep)
    lateness = [5, 14, 3, 9, 11, 4, 8, 13, 6, 3]
    out = released(encoder, clock, lateness)
    slack = PACE_SLACK * 1000
    # Frames arriving within the slack of the quickest leave exactly 40 ms apart ...
    gaps = np.diff(out[2:])
    assert np.allclose(gaps, 40.0), gaps
    assert np.allclose(out[2:], [k * 40 + 3 + slack for k in range(2, 10)])
    # ... before the quickest arrived, the first frames were paced on their own (late) time.
    assert np.isclose(out[0], 5 + slack) and np.isclose(out[1], 40 + 5 + slack)
    # Unpaced they would have left as they came: gaps from 29 to 49 ms.
    assert np.ptp(np.diff([k * 40 + late for k, late in enumerate(lateness)])) >= 20


def test_a_late_frame_goes_at_once_and_a_stall_is_forgotten() -> None:
    clock = SteppedClock()
    encoder = PacedVp8Encoder(clock=clock, sleep=clock.sleep)
    slack = PACE_SLACK * 1000
    out = released(encoder, clock, [2, 2, 2, 40, 2, 2])
    assert np.isclose(out[3], 3 * 40 + 40)  # later than the slack: not held further
    assert np.isclose(out[4], 4 * 40 + 2 + slack)  # the cadence resumes
    # After a stall of a second, frames come 1 s after their media time; once the window has
    # forgotten the quick frames they are paced again, on the new footing.
    clock2 = SteppedClock()
    encoder2 = PacedVp8Encoder(clock=clock2, sleep=clock2.sleep)
    n = PACE_WINDOW + 10
    out2 = released(encoder2, clock2, [2] * 5 + [1000 + (k % 3) for k in range(n)])
    tail = np.diff(out2[-5:])
    assert np.allclose(tail, 40.0), tail
    assert out2[-1] - ((len(out2) - 1) * 40 + 1000) <= slack + 1e-6


def test_the_server_sends_vp8_through_the_paced_encoder() -> None:
    vp8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
    opus = RTCRtpCodecParameters(
        mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111
    )
    assert isinstance(rtcrtpsender.get_encoder(vp8), PacedVp8Encoder)
    assert not isinstance(rtcrtpsender.get_encoder(opus), PacedVp8Encoder)


def test_vp8_is_encoded_without_the_denoiser_and_decodes() -> None:
    encoder = PacedVp8Encoder(sleep=lambda s: None)
    assert encoder.open_codec(64, 64).options["noise-sensitivity"] == "0"
    decoder = av.CodecContext.create("libvpx", "r")
    shown, codecs = [], []
    for k in range(6):
        if k == 3:
            encoder.target_bitrate = 1_000_000  # as a receiver's estimate moves it
        payloads, _ = encoder.encode(frame(k), force_keyframe=k == 4)
        codecs.append(encoder.codec)
        data = b"".join(vp8_depayload(p) for p in payloads)
        shown += decoder.decode(av.Packet(data))
        if k == 4:
            assert data[0] & 1 == 0  # a keyframe when the receiver asks for one
    # aiortc kept the codec opened here, and the new bitrate got one opened here again.
    assert codecs[0] is codecs[1] is codecs[2] and codecs[3] is codecs[5] is not codecs[0]
    assert codecs[3].bit_rate == 1_000_000
    assert len(shown) == 6
    assert abs(float(shown[-1].to_ndarray(format="rgb24").mean()) - 35) < 4  # frame 5's grey


def test_the_page_gets_the_servers_ice_servers_with_turn_credentials_made_now(
    default_avatar, tmp_path
) -> None:
    """A page behind a NAT needs a relay it can reach too, so it is given the server's ICE
    servers; a TURN secret is never handed out, only a credential that expires by itself,
    made the way coturn's ``static-auth-secret`` checks it."""
    import base64
    import hashlib
    import hmac
    import time

    import httpx
    import pytest

    from rtlipsync.config import load_settings
    from rtlipsync.errors import InputError
    from rtlipsync.server import ServerConfig
    from rtlipsync.transport.webrtc import rtc_configuration

    from conftest import serving

    secret = "a-coturn-static-auth-secret"
    servers = [
        {"urls": "stun:stun.example.org:3478"},
        {"urls": "turn:turn.example.org:3478", "username": "u", "credential": "c"},
        {"urls": ["turn:relay.example.org:3478"], "auth_secret": secret, "ttl": 600},
    ]
    with serving(ServerConfig(ice_servers=servers)) as base:
        answer = httpx.get(f"{base}/ice_servers")
    assert answer.status_code == 200 and secret not in answer.text
    given = answer.json()["ice_servers"]
    assert given[:2] == servers[:2]
    turn = given[2]
    assert set(turn) == {"urls", "username", "credential"}
    expiry, name = turn["username"].split(":")
    assert name == "rtlipsync" and 590 <= int(expiry) - time.time() <= 600
    signed = hmac.new(secret.encode(), turn["username"].encode(), hashlib.sha1).digest()
    assert turn["credential"] == base64.b64encode(signed).decode()
    # The server's own side of the call uses such a credential too.
    own = rtc_configuration(servers).iceServers[2]
    assert own.username.endswith(":rtlipsync") and own.credential and own.credential != secret

    config = tmp_path / "bad.yaml"
    config.write_text("ice_servers:\n  - turn:turn.example.org:3478\n")  # (no urls key)
    with pytest.raises(InputError, match=r"ice_servers must be a list of \{urls"):
        load_settings(config)
