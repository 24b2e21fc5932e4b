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
