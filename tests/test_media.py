"""Audio and video I/O: decoding, resampling, fps normalisation, atomic mp4 writing."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pytest

from rtlipsync.errors import InputError
from rtlipsync.media.audio import GrowingBuffer, load_audio
from rtlipsync.media.frames import FRAME_SAMPLES, PACKET_SAMPLES, Phoneme, SpeechChunk, chunk_speech
from rtlipsync.media.video import Mp4Writer, read_video_frames

from conftest import write_wav


def numbered_video(path: Path, fps: int, count: int, size: int = 64) -> Path:
    """A video whose frame i shows i in binary (8 black/white bands), to tell frames apart."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width = s.height = size
        s.pix_fmt = "yuv420p"
        for i in range(count):
            img = np.zeros((size, size, 3), np.uint8)
            for bit in range(8):
                if i >> bit & 1:
                    img[:, bit * 8 : bit * 8 + 8] = 255
            for p in s.encode(av.VideoFrame.from_ndarray(img, format="bgr24")):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    return path


def frame_number(img: np.ndarray) -> int:
    return sum(1 << bit for bit in range(8) if img[:, bit * 8 + 2 : bit * 8 + 6].mean() > 128)


def test_load_audio_resamples_and_downmixes(tmp_path: Path) -> None:
    t = np.arange(44100) / 44100
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    stereo = np.stack([tone, tone], axis=1).reshape(-1)
    path = write_wav(tmp_path / "s.wav", stereo, 44100, channels=2)
    samples, rate = load_audio(path, 16000)
    assert rate == 16000
    assert abs(len(samples) - 16000) <= 2
    spectrum = np.abs(np.fft.rfft(samples))
    assert abs(np.argmax(spectrum) * 16000 / len(samples) - 440) < 3
    assert 0.45 < np.max(np.abs(samples)) < 0.55


@pytest.mark.parametrize(
    ("content", "message"),
    [(None, "not found"), (b"", "cannot read"), (b"RIFF....WAVEjunk" * 10, "cannot read")],
)
def test_load_audio_refuses_bad_files(tmp_path: Path, content: bytes | None, message: str) -> None:
    path = tmp_path / "bad.wav"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(InputError, match=message):
        load_audio(path)


def test_load_audio_refuses_empty(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "empty.wav", np.zeros(0, np.int16), 16000)
    with pytest.raises(InputError, match="empty"):
        load_audio(path)


@pytest.mark.parametrize(
    ("fps", "count", "expected"), [(25, 25, 25), (50, 50, 25), (10, 10, 25), (30, 30, 25)]
)
def test_video_is_normalised_to_25_fps(tmp_path: Path, fps: int, count: int, expected: int) -> None:
    path = numbered_video(tmp_path / f"v{fps}.mp4", fps, count)
    frames = list(read_video_frames(path))
    assert len(frames) == expected  # one second of video stays one second
    levels = [frame_number(f) for f in frames]
    assert levels == sorted(levels)  # time only moves forward
    for k, level in enumerate(levels):  # tick k shows the source frame on screen at k/25 s
        assert level == int(np.floor(k / 25 * fps + 1e-6))


def test_chunk_speech_keeps_phonemes_with_their_chunk() -> None:
    pcm = np.zeros(1000, np.int16)
    chunks = list(chunk_speech(pcm, [Phoneme("a", 0.0, 0.01), Phoneme("m", 0.025, 0.01)]))
    assert [len(c.pcm) for c in chunks] == [320, 320, 320, 40]
    assert chunks[0].phonemes == (Phoneme("a", 0.0, 0.01),)
    assert chunks[1].phonemes[0].symbol == "m"
    assert chunks[1].phonemes[0].start == pytest.approx(0.025 - PACKET_SAMPLES / 16000)
    assert [c.end_of_utterance for c in chunks] == [False, False, False, True]
    with pytest.raises(ValueError):
        SpeechChunk(pcm=np.zeros(10, np.float32))
    assert FRAME_SAMPLES == 2 * PACKET_SAMPLES


def test_mp4_writer_is_atomic(tmp_path: Path) -> None:
    out = tmp_path / "x.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(out, 64, 64) as w:
            w.write_video(np.zeros((64, 64, 3), np.uint8))
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []  # neither the output nor a temporary file
    with Mp4Writer(out, 64, 64, audio_rate=16000) as w:
        for _ in range(25):
            w.write_video(np.zeros((64, 64, 3), np.uint8))
            w.write_audio(np.zeros(640, np.int16))
    assert [p.name for p in tmp_path.iterdir()] == ["x.mp4"]
    with av.open(str(out)) as c:
        assert c.streams.video[0].codec_context.name == "h264"
        assert c.streams.audio[0].codec_context.name == "aac"
        assert c.streams.video[0].frames == 25


def test_growing_buffer_appends_and_reads_in_order() -> None:
    buf = GrowingBuffer()
    rng = np.random.default_rng(0)
    pieces = [rng.integers(-30000, 30000, n).astype(np.int16) for n in (5, 4000, 1, 9000, 320)]
    whole = np.concatenate(pieces)
    taken = []
    for piece in pieces:
        buf.append(piece)
        taken.append(buf.take(700))  # read while it grows: storage is reused, then doubled
    assert len(buf) == len(whole) - sum(len(t) for t in taken)
    taken.append(buf.take(len(buf)))
    assert np.array_equal(np.concatenate(taken), whole) and len(buf) == 0
    rows = GrowingBuffer(np.float32, (2, 3))
    for k in range(40):
        rows.append(np.full((k % 3 + 1, 2, 3), k, np.float32))
    assert rows.data.shape == (sum(k % 3 + 1 for k in range(40)), 2, 3)
    assert rows.data[-1, 0, 0] == 39 and rows.data[0, 1, 2] == 0


def _forged_rate_wav(path: Path, rate: int, samples: int) -> Path:
    """A WAV whose header claims ``rate`` Hz: 16,000 samples at 1 Hz are 4.4 hours."""
    import wave

    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(np.zeros(samples, np.int16).tobytes())
    return path


def test_load_audio_refuses_a_rate_no_audio_has(tmp_path: Path) -> None:
    wav = _forged_rate_wav(tmp_path / "one-hz.wav", 1, 16_000)
    with pytest.raises(InputError, match=r"sample rate is 1 Hz"):
        load_audio(wav, 16_000)


def test_load_audio_stops_at_its_length_limit(tmp_path: Path) -> None:
    # 12 minutes of silence in a few kilobytes: refused once 10 minutes are decoded.
    flac = tmp_path / "silence.flac"
    with av.open(str(flac), "w") as out:
        stream = out.add_stream("flac", rate=8000, layout="mono")
        for k in range(12 * 60):
            frame = av.AudioFrame.from_ndarray(
                np.zeros((1, 8000), np.int16), format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts = 8000, k * 8000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert flac.stat().st_size < 200_000
    with pytest.raises(InputError, match=r"more than 600 s of audio.*send a shorter file"):
        load_audio(flac, 16_000, max_seconds=600, label="upload.flac")
    samples, rate = load_audio(flac, max_seconds=800)
    assert rate == 8000 and len(samples) == 12 * 60 * 8000
