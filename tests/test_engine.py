"""The CPU engine: the streaming contract, reset, silence and noise, mouth shapes, pixels."""

from __future__ import annotations

import numpy as np
import pytest

from rtlipsync.engines.base import EngineStream, LipSyncEngine, render_speech
from rtlipsync.engines.cpu import CpuEngine
from rtlipsync.engines.cpu.engine import avatar_rigs
from rtlipsync.engines.cpu.render import FrameRig, MouthParams
from rtlipsync.face.avatar import load_avatar, prepare_avatar
from rtlipsync.media.frames import FRAME_SAMPLES, SAMPLE_RATE, SpeechChunk, chunk_speech


def frames_of(stream, pcm, phonemes=(), chunk=320):
    return (
        list(render_speech(stream, pcm, phonemes)) if chunk == 320 else _chunked(stream, pcm, chunk)
    )


def _chunked(stream, pcm, chunk):
    out = []
    for c in chunk_speech(pcm, chunk_samples=chunk):
        stream.push(c)
        out.extend(stream.frames())
    return out


@pytest.fixture(scope="module")
def video_avatar(default_avatar, tmp_path_factory):
    """A video avatar (no synthetic idle life): the default face over four moving frames."""
    import cv2

    folder = tmp_path_factory.mktemp("frames")
    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), np.roll(default_avatar.frames[0], 2 * i, axis=1))
    prepare_avatar("fourframes", folder, progress=False)
    return load_avatar("fourframes")


def test_engine_implements_the_protocol(default_avatar) -> None:
    engine = CpuEngine()
    assert isinstance(engine, LipSyncEngine)
    stream = engine.open_stream(default_avatar)
    assert isinstance(stream, EngineStream)
    assert 0 < stream.lookahead <= 0.2  # the articulation layer's budget


def test_chunks_in_frames_out_with_declared_lookahead(default_avatar, speech16k) -> None:
    stream = CpuEngine().open_stream(default_avatar)
    pcm = speech16k.pcm
    received, out = 0, []
    lookahead = round(stream.lookahead * SAMPLE_RATE)
    for chunk in chunk_speech(pcm, speech16k.phonemes):
        stream.push(chunk)
        received += len(chunk.pcm)
        out.extend(stream.frames())
        if not chunk.end_of_utterance:
            # Never a frame before its look-ahead has arrived, and never later than needed.
            # (frame k needs audio up to (k + 1) * FRAME_SAMPLES + lookahead)
            assert not out or len(out) * FRAME_SAMPLES + lookahead <= received
            assert len(out) >= (received - lookahead) // FRAME_SAMPLES - 1
    n = -(-len(pcm) // FRAME_SAMPLES)
    assert len(out) == n
    assert [f.index for f in out] == list(range(n))
    assert all(f.audio.dtype == np.int16 and len(f.audio) == FRAME_SAMPLES for f in out)
    audio = np.concatenate([f.audio for f in out])
    assert np.array_equal(audio[: len(pcm)], pcm) and not audio[len(pcm) :].any()
    assert all(f.speaking for f in out)
    assert stream.pending == 0


@pytest.mark.parametrize("chunk", [160, 1280, 777])
def test_streaming_equals_batch(video_avatar, speech16k, chunk: int) -> None:
    batch = frames_of(CpuEngine().open_stream(video_avatar), speech16k.pcm)
    streamed = frames_of(CpuEngine().open_stream(video_avatar), speech16k.pcm, chunk=chunk)
    assert len(batch) == len(streamed)
    for a, b in zip(batch, streamed, strict=True):
        assert a.mouth == pytest.approx(b.mouth, abs=1e-9)
        assert np.array_equal(a.image, b.image)
        assert np.array_equal(a.audio, b.audio)


def test_output_is_deterministic(default_avatar, speech16k) -> None:
    one = frames_of(CpuEngine().open_stream(default_avatar), speech16k.pcm, speech16k.phonemes)
    two = frames_of(CpuEngine().open_stream(default_avatar), speech16k.pcm, speech16k.phonemes)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(one, two, strict=True))


def test_reset_drops_everything_at_once_and_speech_restarts_cleanly(
    default_avatar, speech16k
) -> None:
    stream = CpuEngine().open_stream(default_avatar)
    pcm = speech16k.pcm
    spoken = []
    for chunk in list(chunk_speech(pcm))[:-1]:  # the utterance never finishes ...
        stream.push(chunk)
        spoken.extend(stream.frames())
        if len(spoken) > 10 and spoken[-1].mouth["open"] > 0.1:
            break  # ... it is cut off mid-vowel, the lips apart
    assert spoken and spoken[-1].mouth["open"] > 0.1
    last = spoken[-1]
    stream.reset()
    assert list(stream.frames()) == [] and stream.pending == 0
    after = [stream.idle() for _ in range(3)]
    assert [f.index for f in after] == [last.index + 1, last.index + 2, last.index + 3]
    assert all(not f.audio.any() and not f.speaking for f in after)
    assert after[0].mouth["open"] <= 0.35 * last.mouth["open"] + 1e-9  # closing ...
    assert after[1].mouth["open"] == after[2].mouth["open"] == 0.0  # ... and shut
    # New speech after the interruption: its own audio from its first sample.
    fresh = list(render_speech(stream, pcm[:8000]))
    assert np.array_equal(np.concatenate([f.audio for f in fresh])[:8000], pcm[:8000])
    assert fresh[0].index == after[-1].index + 1


def test_silence_and_noise_keep_the_mouth_closed_and_still(video_avatar) -> None:
    rng = np.random.default_rng(0)
    silence = np.zeros(2 * SAMPLE_RATE, np.int16)
    white = (rng.normal(0, 0.05, 3 * SAMPLE_RATE) * 32767).astype(np.int16)
    hum = (0.1 * np.sin(2 * np.pi * 50 * np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE) * 32767).astype(
        np.int16
    )
    for pcm in (silence, white, hum):
        stream = CpuEngine().open_stream(video_avatar)
        frames = frames_of(stream, pcm)
        opens = np.array([f.mouth["open"] for f in frames])
        assert opens.max() < 0.05, opens.max()
    # Closed means the avatar's own face: a silent frame is the idle frame.
    a = CpuEngine().open_stream(video_avatar)
    b = CpuEngine().open_stream(video_avatar)
    for f in frames_of(a, silence)[:8]:
        assert np.abs(f.image.astype(int) - b.idle().image.astype(int)).max() <= 1


def test_mouth_shapes_follow_phonemes_and_sound(default_avatar) -> None:
    from rtlipsync.articulation import Articulator
    from rtlipsync.articulation.phonemes import is_bilabial
    from rtlipsync.speech.espeak import EspeakTTS

    tts = EspeakTTS()

    def shapes(text: str, with_phonemes: bool):
        s = tts.synthesize(text).at_rate(SAMPLE_RATE)
        a = Articulator()
        a.push(s.pcm, tuple(s.phonemes) if with_phonemes else ())
        a.finish()
        out = []
        while a.frames_ready():
            out.append(a.take())
        return s, out

    for with_phonemes in (True, False):
        _, ee = shapes("eeeee", with_phonemes)
        _, oo = shapes("ooooo", with_phonemes)
        _, ah = shapes("aaaaa", with_phonemes)
        spread = np.mean([p.width for p in ee if p.open > 0.15])
        rounded = np.mean([p.width for p in oo if p.open > 0.15])
        assert spread > 0.4 and rounded < -0.4, (with_phonemes, spread, rounded)
        assert max(p.open for p in ah) > 0.7
        assert max(p.open for p in ah) > max(p.open for p in ee) + 0.2
    # Exact phonemes: lips shut on every m, b and p, open on the vowels between.
    s, mp = shapes("mama papa bob", True)
    for ph in s.phonemes:
        if is_bilabial(ph.symbol) and ph.duration >= 0.04:
            frame = int((ph.start + ph.duration / 2) * 25)
            assert min(p.open for p in mp[frame - 1 : frame + 2]) == 0.0, ph
    assert max(p.open for p in mp) > 0.6


def test_transitions_are_smooth(default_avatar, speech16k) -> None:
    frames = frames_of(CpuEngine().open_stream(default_avatar), speech16k.pcm)
    opens = np.array([f.mouth["open"] for f in frames])
    assert opens.max() > 0.5
    # No jumps across the range: lips take about 50 ms to close on a bilabial, so one frame
    # may cover most of that travel, never all of it; the jaw opens over two frames.
    assert np.abs(np.diff(opens)).max() < 0.65
    # No jitter: the second difference of the opening (scaled so its 90th percentile is 0.6)
    # stays near a real mouth's. Real talking clips measure 0.06-0.14 on it; espeak-ng's
    # brisk speech asks for a little more movement than they do.
    scaled = opens / np.percentile(opens, 90) * 0.6
    assert np.abs(np.diff(scaled, 2)).mean() < 0.2


def test_rendered_mouth_changes_only_around_the_mouth(video_avatar) -> None:
    frame = video_avatar.frames[0]
    rig = FrameRig(video_avatar.landmarks[0], frame, idle_life=False)
    closed = rig.render(frame, MouthParams(0.0))
    wide = rig.render(frame, MouthParams(0.9))
    r = rig.region
    diff = np.abs(wide.astype(int) - closed.astype(int)).max(axis=2)
    assert diff[r.y0 : r.y1, r.x0 : r.x1].max() > 100  # a dark mouth where lips were
    outside = diff.copy()
    outside[r.y0 : r.y1, r.x0 : r.x1] = 0
    assert outside.max() == 0
    # No box: along the region's border the picture is the untouched frame.
    ring = np.concatenate([diff[r.y0, r.x0 : r.x1], diff[r.y1 - 1, r.x0 : r.x1],
                           diff[r.y0 : r.y1, r.x0], diff[r.y0 : r.y1, r.x1 - 1]])  # fmt: skip
    assert ring.max() <= 2
    # Down the middle of the mouth: a dark cavity appears between the lips.
    pts = video_avatar.landmarks[0]
    cx, cy = np.round((pts[13] + pts[14]) / 2).astype(int)
    half = int(np.linalg.norm(pts[291] - pts[61]) / 2)

    def column(img):
        return img[cy - half // 2 : cy + half, cx].astype(float).mean(axis=1)

    assert (column(wide) < 50).sum() >= (column(closed) < 50).sum() + 3


def test_a_blink_moves_only_the_lids_never_the_glasses_around_them(default_avatar) -> None:
    """The default face wears glasses whose rim sits just above the eyes: a blink may change
    the eyes' openings and nothing above the upper lids (no "melting glasses")."""
    from rtlipsync.engines.cpu.render import LEFT_EYE_UPPER, RIGHT_EYE_UPPER

    rig = avatar_rigs(default_avatar).rig(0)
    base = default_avatar.frames[0]
    still = (0.0, 0.0, 0.0)
    open_ = rig.render(base, MouthParams(), 0.0, still).astype(int)
    shut = rig.render(base, MouthParams(), 1.0, still).astype(int)
    changed = np.abs(shut - open_).max(axis=2) > 6
    assert changed.sum() > 100  # the lids did come down
    pts = default_avatar.landmarks[0]
    ys, xs = np.nonzero(changed)
    for upper in (LEFT_EYE_UPPER, RIGHT_EYE_UPPER):
        lid = pts[upper]
        order = np.argsort(lid[:, 0])
        near = (xs >= lid[:, 0].min() - 2) & (xs <= lid[:, 0].max() + 2)
        top = np.interp(xs[near], lid[order, 0], lid[order, 1])
        assert (ys[near] >= top - 2.5).all()  # nothing above the upper lid moved
    eyes_x = np.concatenate([pts[LEFT_EYE_UPPER, 0], pts[RIGHT_EYE_UPPER, 0]])
    assert xs.min() >= eyes_x.min() - 3 and xs.max() <= eyes_x.max() + 3


def test_still_avatar_blinks_and_sways_but_video_avatar_plays_its_loop(
    default_avatar, video_avatar
) -> None:
    import cv2

    stream = CpuEngine().open_stream(default_avatar)
    idles = [stream.idle() for _ in range(150)]  # six seconds
    pts = default_avatar.landmarks[0]

    def irises(img) -> float:  # brightness where the irises are: a lid closing over them shows
        grey = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY).astype(float)
        return float(np.mean([grey[int(pts[k, 1]) - 4 : int(pts[k, 1]) + 5,
                                   int(pts[k, 0]) - 8 : int(pts[k, 0]) + 9].mean()
                              for k in (468, 473)]))  # fmt: skip

    level = np.array([irises(f.image) for f in idles])
    deviation = np.abs(level - np.median(level))
    assert deviation.max() > 20  # a blink happened
    assert 1 <= (deviation > 20).sum() <= 10  # and was brief (lids back within 0.4 s)
    far = [np.abs(f.image.astype(int) - idles[0].image.astype(int)).mean() for f in idles]
    assert max(far) > 0.5  # the head sways
    assert all(f.mouth["open"] == 0 and not f.audio.any() for f in idles)
    # A video avatar plays its own frames forward then back; at rest only the lips are
    # touched (pressed together where the source had them parted), nothing else.
    vs = CpuEngine().open_stream(video_avatar)
    rigs = avatar_rigs(video_avatar)
    for k in [int(i) for i in video_avatar.loop[:8]]:
        img, src = vs.idle().image.astype(int), video_avatar.frames[k].astype(int)
        r = rigs.rig(k).region
        outside = np.abs(img - src)
        outside[r.y0 : r.y1, r.x0 : r.x1] = 0
        assert outside.max() == 0
        assert np.abs(img - src)[r.y0 : r.y1, r.x0 : r.x1].mean() < 2


def test_emotion_hint_lifts_the_corners(video_avatar, speech16k) -> None:
    neutral = frames_of(CpuEngine().open_stream(video_avatar), speech16k.pcm)
    stream = CpuEngine().open_stream(video_avatar)
    happy = list(render_speech(stream, speech16k.pcm, emotion="happy"))
    assert all(f.mouth["smile"] > 0.5 for f in happy)
    assert all(f.mouth["smile"] == 0 for f in neutral)
    assert any(not np.array_equal(a.image, b.image) for a, b in zip(neutral, happy, strict=True))


def test_speech_chunk_rejects_wrong_format() -> None:
    with pytest.raises(ValueError, match="int16"):
        SpeechChunk(pcm=np.zeros((2, 320), np.int16))


def test_rig_cache_is_bounded_and_rebuilt_rigs_draw_the_same(
    video_avatar, speech16k, monkeypatch
) -> None:
    from rtlipsync.engines.cpu.engine import AvatarRigs

    cached = frames_of(CpuEngine().open_stream(video_avatar), speech16k.pcm)
    video_avatar.extras.pop("cpu")
    monkeypatch.setattr(AvatarRigs, "MAX_BYTES", 1)
    rebuilt = frames_of(CpuEngine().open_stream(video_avatar), speech16k.pcm)
    assert avatar_rigs(video_avatar)._rigs == {}  # nothing kept past the budget
    assert all(np.array_equal(a.image, b.image) for a, b in zip(cached, rebuilt, strict=True))
    video_avatar.extras.pop("cpu")


def test_an_utterance_queued_before_the_last_one_played_keeps_audio_and_shapes(
    video_avatar, speech16k
) -> None:
    """Chat pushes sentence two while sentence one still plays: nothing may be lost."""
    one, two = speech16k.pcm[:12_345], speech16k.pcm[12_345:30_000]
    stream = CpuEngine().open_stream(video_avatar)
    for chunk in chunk_speech(one):
        stream.push(chunk)
    early = [next(stream.frames())]  # sentence one has started playing ...
    for chunk in chunk_speech(two):  # ... when sentence two arrives
        stream.push(chunk)
    frames = early + list(stream.frames())
    expected = -(-len(one) // FRAME_SAMPLES) + -(-len(two) // FRAME_SAMPLES)
    assert len(frames) == expected and stream.pending == 0
    audio = np.concatenate([f.audio for f in frames])
    n1 = -(-len(one) // FRAME_SAMPLES) * FRAME_SAMPLES
    assert np.array_equal(audio[: len(one)], one) and np.array_equal(audio[n1 : n1 + len(two)], two)
    # The same shapes as each sentence rendered on its own.
    alone = frames_of(CpuEngine().open_stream(video_avatar), one) + frames_of(
        CpuEngine().open_stream(video_avatar), two
    )
    shapes = [(f.mouth["open"], f.mouth["width"]) for f in frames]
    assert np.allclose(shapes, [(f.mouth["open"], f.mouth["width"]) for f in alone])
