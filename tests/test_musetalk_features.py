"""MuseTalk's audio windows on a random-weight Whisper-tiny encoder: shapes, padding at the
clip's ends, the five states, and streamed features identical to whole-clip ones."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the musetalk extra is not installed")
transformers = pytest.importorskip("transformers")

from rtlipsync.engines.musetalk.features import (  # noqa: E402
    AudioFeatures,
    encoder_states,
    positional_encoding,
)


@pytest.fixture(scope="module")
def whisper():  # noqa: ANN201
    from tiny_musetalk import whisper_tiny

    torch.manual_seed(0)
    return whisper_tiny()


def speechlike(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * 16000)) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)
    tone = np.sin(2 * np.pi * 180 * t) + 0.3 * rng.normal(size=t.size)
    return (8000 * envelope * tone).astype(np.int16)


def test_positional_encoding() -> None:
    pe = positional_encoding()
    assert pe.shape == (50, 384)
    assert pe[0, 0] == 0 and pe[0, 1] == 1 and pe[1, 0] == pytest.approx(np.sin(1.0))
    assert pe[3, 2] == pytest.approx(np.sin(3 / 10000 ** (2 / 384)))


def test_five_states_end_with_the_final_layer_norm(whisper) -> None:  # noqa: ANN001
    encoder, extractor = whisper
    mel = extractor(speechlike(1.0) / 32768, sampling_rate=16000, return_tensors="pt")
    with torch.no_grad():
        states = encoder_states(encoder, mel.input_features)
        reference = encoder(mel.input_features).last_hidden_state
    assert states.shape == (1, 1500, 5, 384)
    torch.testing.assert_close(states[:, :, 4], reference, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(states[:, :, 3], states[:, :, 4])


def test_windows_and_padding_at_both_ends(whisper) -> None:  # noqa: ANN001
    features = AudioFeatures(*whisper)
    features.push(speechlike(1.0))
    assert features.frames_ready() < 25  # the last frames wait for their look-ahead
    with pytest.raises(ValueError, match="frame 24 is not ready"):
        features.window(24)
    features.end()
    assert features.total_frames == 25 and features.frames_ready() == 25
    first, last = features.window(0), features.window(24)
    assert first.shape == last.shape == (50, 384)
    rows = first.reshape(10, 5, 384)
    assert not rows[:4].any() and rows[4:].any()  # 80 ms before the clip: zeros
    rows = last.reshape(10, 5, 384)  # rows 44..53 of a 50-row clip
    assert rows[:6].any() and not rows[6:].any()
    # Time-major: token t*5 + k is row t's state k.
    middle = features.window(10).reshape(10, 5, 384)
    assert np.array_equal(middle[4], features.window(12).reshape(10, 5, 384)[0])


def test_streamed_features_equal_whole_clip_features(whisper) -> None:  # noqa: ANN001
    clip = speechlike(2.3, seed=1)
    whole = AudioFeatures(*whisper)
    whole.push(clip)
    whole.end()
    expected = [whole.window(f) for f in range(whole.frames_ready())]
    streamed = AudioFeatures(*whisper)
    rng = np.random.default_rng(2)
    got, i = [], 0
    while i < len(clip):
        n = int(rng.integers(100, 3000))
        streamed.push(clip[i : i + n])
        i += n
        while len(got) < streamed.frames_ready():
            got.append(streamed.window(len(got)))
        # A frame is never made before its block and its 80 ms look-ahead have arrived.
        assert len(got) * 640 <= i
    streamed.end()
    while len(got) < streamed.frames_ready():
        got.append(streamed.window(len(got)))
    assert len(got) == len(expected) == 57
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    again = AudioFeatures(*whisper)
    again.push(clip)
    again.end()
    assert np.array_equal(again.window(30), expected[30])  # deterministic


def official_windows(encoder, extractor, clip: np.ndarray) -> np.ndarray:  # noqa: ANN001
    """MuseTalk's own features for a whole clip, step for step as
    ``musetalk/utils/audio_processor.py`` computes them (30 s segments from the start, each
    Whisper's whole input; hidden states stacked; trimmed; padded; one window per frame)."""
    audio = clip.astype(np.float32) / 32768.0
    segments = [audio[i : i + 480000] for i in range(0, len(audio), 480000)]
    with torch.no_grad():
        feats = [
            torch.stack(
                encoder(
                    extractor(s, return_tensors="pt", sampling_rate=16000).input_features,
                    output_hidden_states=True,
                ).hidden_states,
                dim=2,
            )
            for s in segments
        ]
    feature = torch.cat(feats, dim=1)[:, : int(np.floor(len(audio) / 16000 * 50))]
    feature = torch.cat(
        [torch.zeros_like(feature[:, :4]), feature, torch.zeros_like(feature[:, :12])], 1
    )
    frames = int(np.floor(len(audio) / 16000 * 25))
    windows = [feature[:, 2 * f : 2 * f + 10] for f in range(frames)]
    return torch.cat(windows).reshape(frames, 50, 384).numpy()


@pytest.fixture(scope="module")
def long_clip() -> np.ndarray:
    return speechlike(31.3, seed=3)  # past the first 30 s segment


def test_whole_segments_are_the_official_features(whisper, long_clip) -> None:  # noqa: ANN001
    official = official_windows(*whisper, long_clip)
    features = AudioFeatures(*whisper, block_frames=None)
    features.push(long_clip[:400000])
    assert features.frames_ready() == 0  # the first segment is not all here yet
    features.push(long_clip[400000:])
    assert features.frames_ready() == 748  # frames 0-747 need rows below 1500 only
    features.end()
    ours = np.stack([features.window(f) for f in range(features.frames_ready())])
    assert ours.shape == official.shape == (782, 50, 384)
    np.testing.assert_allclose(ours, official, rtol=0, atol=2e-4)
    assert features.lookahead == 30.0


def test_streamed_rows_sit_at_the_official_positions(whisper, long_clip) -> None:  # noqa: ANN001
    """Blocks are cut from each segment's start: a row in the second segment hears only that
    segment, and a block whose look-ahead reaches its segment's end hears all of it."""
    whole = AudioFeatures(*whisper, block_frames=None)
    whole.push(long_clip)
    whole.end()
    streamed = AudioFeatures(*whisper, block_frames=100)  # big blocks keep the test short
    streamed.push(long_clip)
    streamed.end()
    assert streamed.frames_ready() == whole.frames_ready() == 782
    # Rows 1400-1499 are segment 1's last block: the whole segment is their context.
    for f in (702, 740, 745):  # windows of rows 1400..1499 only
        np.testing.assert_allclose(streamed.window(f), whole.window(f), rtol=0, atol=2e-4)
    # Segment 2 (rows 1500-1564) is the utterance's tail: one block, all of its audio.
    for f in (752, 770, 781):
        np.testing.assert_allclose(streamed.window(f), whole.window(f), rtol=0, atol=2e-4)
    # Earlier blocks have not heard their segment's rest: close, not equal.
    a, b = streamed.window(100), whole.window(100)
    assert not np.allclose(a, b, atol=2e-4)
    assert np.linalg.norm(a - b) < 0.1 * np.linalg.norm(b)
    # A second segment does not hear the first: other audio before it changes nothing there.
    other = long_clip.copy()
    other[:480000] = speechlike(30.0, seed=9)
    changed = AudioFeatures(*whisper, block_frames=100)
    changed.push(other)
    changed.end()
    assert np.array_equal(changed.window(760), streamed.window(760))
    assert not np.allclose(changed.window(100), streamed.window(100))


def test_declared_lookahead_is_what_the_worst_frame_waits_for(whisper) -> None:  # noqa: ANN001
    clip = speechlike(3.0, seed=4)
    features = AudioFeatures(*whisper)
    waits = []
    made = 0
    for i in range(320, len(clip) + 1, 320):  # one 20 ms row at a time
        features.push(clip[i - 320 : i])
        ready = features.frames_ready()
        waits += [i - (f + 1) * 640 for f in range(made, ready)]
        made = ready
    assert max(waits) == round(features.lookahead * 16000) == 24 * 320
    assert min(waits) >= 4 * 320  # no frame before its window's own 80 ms of future
