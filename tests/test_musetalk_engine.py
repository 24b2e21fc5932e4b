"""The MuseTalk engine through the engine protocol, on tiny random-weight networks of the
official architectures: streamed output equals batch output, silence shows the avatar's own
frames, the mouth is changed only inside its mask, reset drops everything, latents cache."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the musetalk extra is not installed")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from rtlipsync.engines.base import EngineStream, LipSyncEngine, render_speech  # noqa: E402
from rtlipsync.engines.musetalk.engine import MuseTalkEngine, MuseTalkNets  # noqa: E402
from rtlipsync.face.geometry import blend_box  # noqa: E402
from rtlipsync.media.frames import SpeechChunk  # noqa: E402


@pytest.fixture(scope="module")
def engine() -> MuseTalkEngine:
    from tiny_musetalk import tiny_engine

    return tiny_engine(batch_size=4)


def test_protocol_and_streaming_equals_batch(engine, default_avatar, speech16k) -> None:  # noqa: ANN001
    assert isinstance(engine, LipSyncEngine)
    pcm = speech16k.pcm[: int(1.5 * 16000)]
    batch = engine.open_stream(default_avatar)
    assert isinstance(batch, EngineStream)
    whole = list(render_speech(batch, pcm, chunk_samples=16000))
    streamed_stream = engine.open_stream(default_avatar)
    streamed = list(render_speech(streamed_stream, pcm))  # 20 ms chunks
    assert len(whole) == len(streamed) == -(-len(pcm) // 640)
    for a, b in zip(whole, streamed, strict=True):
        assert np.array_equal(a.image, b.image) and np.array_equal(a.audio, b.audio)
    assert np.array_equal(np.concatenate([f.audio for f in whole])[: len(pcm)], pcm)
    assert batch.pending == 0


def test_pasting_on_the_device_gives_the_same_frames(engine, default_avatar, speech16k) -> None:  # noqa: ANN001
    """The GPU's path (faces pasted where they were made, regions copied back), run here on
    the CPU: the same frames as the CPU paste, to cv2's resize rounding."""
    from tiny_musetalk import tiny_engine

    device = tiny_engine(batch_size=4, device_blend=True)
    assert not engine.nets.device_blend and device.nets.device_blend  # off by default on a CPU
    pcm = speech16k.pcm[:16000]
    here = list(render_speech(engine.open_stream(default_avatar), pcm))
    there = list(render_speech(device.open_stream(default_avatar), pcm))
    assert len(here) == len(there) == 25
    region = device.open_stream(default_avatar).blend.region(0)  # the still avatar's one frame
    moved = 0
    for a, b in zip(here, there, strict=True):
        diff = np.abs(a.image.astype(int) - b.image.astype(int))
        assert diff.max() <= 2 and diff[region].mean() < 0.2
        diff[region] = 0
        assert not diff.any()  # nothing outside the blend box differs
        moved += not np.array_equal(b.image, default_avatar.frames[0])
    assert moved >= 20


def test_silence_shows_the_avatar_and_speech_only_the_mouth(
    engine, default_avatar, speech16k
) -> None:  # noqa: ANN001
    stream = engine.open_stream(default_avatar)
    pcm = np.concatenate([np.zeros(16000 // 2, np.int16), speech16k.pcm[:16000]])
    frames = list(render_speech(stream, pcm))
    own = default_avatar.frames[0]
    silent, spoken = frames[:10], frames[14:]
    assert all(np.array_equal(f.image, own) for f in silent)  # no hallucinated lip motion
    changed = [f for f in spoken if not np.array_equal(f.image, own)]
    assert len(changed) >= 0.8 * len(spoken)
    x1, y1, x2, y2 = (int(v) for v in default_avatar.boxes[0])
    diff = np.abs(changed[0].image.astype(int) - own.astype(int)).sum(axis=2)
    ys, xs = np.nonzero(diff)
    side = blend_box((x1, y1, x2, y2))[2] - blend_box((x1, y1, x2, y2))[0]
    # Only below the crop's centre line (the mouth), less the mask's feathered edge.
    assert ys.min() >= (y1 + y2) // 2 - side // 20 - 2
    assert x1 - 2 <= xs.min() and xs.max() <= x2 + 2


def test_quiet_noise_is_not_speech_and_speech_fades_in(engine, default_avatar, speech16k) -> None:  # noqa: ANN001
    """Silence is what the voice activity model hears, not a loudness threshold: room noise
    louder than the old RMS rule's 100 shows the avatar's own face; speech's first frames
    crossfade from the avatar's face to the generated one; "off" renders every frame."""
    from rtlipsync.engines.musetalk.presence import FADE, SpeechPresence
    from rtlipsync.errors import InputError

    rng = np.random.default_rng(0)
    noise = np.clip(rng.normal(0, 400, 16000 // 2), -32768, 32767).astype(np.int16)
    assert np.sqrt(np.mean(noise.astype(float) ** 2)) > 100
    pcm = np.concatenate([noise, np.zeros(16000 // 4, np.int16), speech16k.pcm[:16000]])
    own = default_avatar.frames[0]
    frames = list(render_speech(engine.open_stream(default_avatar), pcm))
    assert all(np.array_equal(f.image, own) for f in frames[:12])  # the noise: no lips
    presence = SpeechPresence()
    presence.push(pcm)
    presence.end()
    weights = [presence.weight(f) for f in range(len(frames))]
    onset = next(f for f, w in enumerate(weights) if w == 1.0)
    assert 12 < onset and 0 < weights[onset - 1] < 1 and weights[onset - FADE - 1] == 0
    full = MuseTalkEngine(engine.nets, batch_size=4, silence="off")
    everything = list(render_speech(full.open_stream(default_avatar), pcm))
    assert sum(not np.array_equal(f.image, own) for f in everything[:12]) >= 10  # "off"
    for f in range(onset - FADE, onset + 1):  # the crossfade, frame by frame
        w = weights[f]
        expected = w * everything[f].image.astype(float) + (1 - w) * own.astype(float)
        assert np.abs(frames[f].image.astype(float) - expected).max() <= 2.0
    with pytest.raises(InputError, match="unknown silence mode"):
        MuseTalkEngine(engine.nets, silence="rms")


def test_whole_segment_audio_for_offline_renders(engine, default_avatar, speech16k) -> None:  # noqa: ANN001
    """``audio="segment"``: the official features, each frame waiting for its 30 s segment
    (or the utterance's end); live streams declare the 0.48 s their blocks need."""
    from rtlipsync.errors import InputError

    offline = MuseTalkEngine(engine.nets, batch_size=4, audio="segment")
    live = engine.open_stream(default_avatar)
    stream = offline.open_stream(default_avatar)
    assert live.lookahead == pytest.approx(0.48) and stream.lookahead == 30.0
    pcm = speech16k.pcm[:16000]
    stream.push(SpeechChunk(pcm=pcm))
    assert list(stream.frames()) == []  # the segment is not complete yet
    stream.push(SpeechChunk(pcm=np.zeros(0, np.int16), end_of_utterance=True))
    assert len(list(stream.frames())) == 25
    streamed = list(render_speech(live, pcm))
    assert len(streamed) == 25
    with pytest.raises(InputError, match="unknown audio mode"):
        MuseTalkEngine(engine.nets, audio="whole")


def test_a_clock_taking_one_frame_per_tick_renders_each_frame_once(
    engine, default_avatar, speech16k
) -> None:  # noqa: ANN001
    """A live session takes one frame per 40 ms tick (``next(iter(stream.frames()))``); the
    rest of a batch must wait for the next ticks, not be rendered again."""
    pcm = speech16k.pcm[:16000]
    reference = list(render_speech(engine.open_stream(default_avatar), pcm))
    stream = engine.open_stream(default_avatar)
    before = engine.nets.batcher.batches
    stream.push(SpeechChunk(pcm, end_of_utterance=True))
    taken = []
    while stream.pending > 0:
        frame = next(iter(stream.frames()), None)
        assert frame is not None
        taken.append(frame)
    assert len(taken) == len(reference) == 25
    for a, b in zip(taken, reference, strict=True):  # (to a level of float rounding)
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 1
    assert engine.nets.batcher.batches - before == -(-25 // engine.batch_size)  # 7, not 25
    stream.push(SpeechChunk(pcm, end_of_utterance=True))
    first = next(iter(stream.frames()))  # one batch made, one frame shown
    stream.reset()  # cut in: the rest of the batch is dropped with the speech
    assert stream.pending == 0 and list(stream.frames()) == []
    assert stream.idle().index == first.index + 1  # the idle loop goes on from what was shown


def test_reset_and_idle(engine, default_avatar, speech16k) -> None:  # noqa: ANN001
    stream = engine.open_stream(default_avatar)
    for i in range(0, 16000, 320):
        stream.push(SpeechChunk(speech16k.pcm[i : i + 320]))
    assert stream.pending > 0.9
    stream.reset()
    assert stream.pending == 0 and list(stream.frames()) == []
    idle = stream.idle()
    assert not idle.speaking and not idle.audio.any()


def test_latents_are_cached_with_the_vae_that_made_them(engine, default_avatar) -> None:  # noqa: ANN001
    path = default_avatar.path / "musetalk" / "latents.npy"
    engine.prepare(default_avatar)
    assert path.exists()
    latents = np.load(path)
    assert latents.shape == (len(default_avatar.frames), 8, 32, 32) and latents.any()
    stamp = path.stat().st_mtime_ns
    default_avatar.extras.pop("musetalk")
    engine.prepare(default_avatar)  # from disk, not recomputed
    assert path.stat().st_mtime_ns == stamp


def test_latents_are_the_posterior_mean_or_a_seeded_sample(engine, default_avatar) -> None:  # noqa: ANN001
    from rtlipsync.engines.musetalk.engine import crop_latents
    from rtlipsync.errors import InputError

    mean = crop_latents(default_avatar, engine.nets)
    sampled = MuseTalkEngine(engine.nets, latents="sample", seed=3)
    sampled.prepare(default_avatar)
    drawn = np.load(default_avatar.path / "musetalk" / "latents-sample3.npy")
    assert drawn.shape == mean.shape and not np.allclose(drawn, mean)
    default_avatar.extras.pop("musetalk")
    again = MuseTalkEngine(engine.nets, latents="sample", seed=3)
    again.prepare(default_avatar)  # the same seed, read back: the same latents
    assert np.array_equal(default_avatar.extras["musetalk"][1], drawn)
    other = crop_latents(default_avatar, engine.nets, "sample", seed=4)
    assert not np.allclose(other, drawn)  # another seed, another draw
    assert np.array_equal(crop_latents(default_avatar, engine.nets), mean)  # the mean is kept
    with pytest.raises(InputError, match="unknown latents"):
        MuseTalkEngine(engine.nets, latents="mode")


def test_render_with_the_musetalk_engine(engine, default_avatar, speech, tmp_path) -> None:  # noqa: ANN001
    import av

    from rtlipsync.render import render

    from conftest import write_wav

    wav = write_wav(
        tmp_path / "speech.wav", speech.pcm[: 2 * speech.sample_rate], speech.sample_rate
    )
    result = render("default", tmp_path / "out.mp4", audio=wav, progress=False, engine=engine)
    assert result.frames == 50 and abs(result.audio_seconds - 2.0) < 0.01
    with av.open(str(result.path)) as container:
        assert sum(1 for _ in container.decode(video=0)) == 50


def test_weights_check_wants_the_networks_not_the_optional_parser(tmp_path) -> None:  # noqa: ANN001
    from rtlipsync.engines.musetalk import weights
    from rtlipsync.errors import InputError

    with pytest.raises(InputError) as exc:
        weights.check("v15", tmp_path)
    assert "musetalkV15/unet.pth" in str(exc.value) and "79999_iter" not in str(exc.value)


def test_a_baked_bank_is_served_by_the_cpu_engine(
    engine, default_avatar, speech16k, tmp_path
) -> None:  # noqa: ANN001
    import cv2

    from rtlipsync.articulation import MouthParams
    from rtlipsync.engines.cpu import CpuEngine
    from rtlipsync.engines.cpu.engine import BankStream
    from rtlipsync.engines.musetalk.bank import bake, grid, load_bank
    from rtlipsync.face.avatar import load_avatar, prepare_avatar

    source = tmp_path / "face.png"  # a copy of the default face: the shared one stays unbaked
    cv2.imwrite(str(source), default_avatar.frames[0])
    prepare_avatar("baked", source, progress=False)
    avatar = load_avatar("baked")
    assert not isinstance(CpuEngine().open_stream(avatar), BankStream)
    path = bake(avatar, engine, progress=False)
    assert path.name == "bank.npz" and not list(path.parent.glob("*.tmp*"))
    bank = load_bank(avatar)
    states = grid()
    assert len(states) == 15 and bank.has(0)
    exact = bank.mouth(0, MouthParams(open=float(states[7][0]), width=float(states[7][1])))
    assert np.array_equal(exact, bank.face(0, 7))  # on a state: that state's face
    between = bank.mouth(0, MouthParams(open=0.375, width=0.0))  # between two: flow-blended
    assert between.shape == (256, 256, 3)
    stream = CpuEngine().open_stream(avatar)
    assert isinstance(stream, BankStream)
    pcm = np.concatenate([speech16k.pcm[:16000], np.zeros(8000, np.int16)])
    frames = list(render_speech(stream, pcm))
    own = avatar.frames[0]
    spoken = [f for f in frames if f.speaking and f.mouth["open"] > 0.2]
    assert spoken and all(not np.array_equal(f.image, own) for f in spoken)
    assert np.array_equal(CpuEngine().open_stream(avatar).idle().image, own)


def test_parsed_blend_masks_when_the_parser_is_there(engine, default_avatar, tmp_path) -> None:  # noqa: ANN001
    import cv2

    from rtlipsync.engines.musetalk.engine import MuseTalkEngine
    from rtlipsync.engines.musetalk.parsing import BiSeNet
    from rtlipsync.face.avatar import load_avatar, prepare_avatar

    source = tmp_path / "face.png"
    cv2.imwrite(str(source), default_avatar.frames[0])
    prepare_avatar("parsed", source, progress=False)
    avatar = load_avatar("parsed")
    n = engine.nets
    torch.manual_seed(0)
    parsed = MuseTalkEngine(
        MuseTalkNets(n.unet, n.vae, n.encoder, n.extractor, "v15", BiSeNet(19).eval())
    )
    stream = parsed.open_stream(avatar)
    path = avatar.path / "musetalk" / "masks-jaw.npz"  # v1.5's official mode
    assert path.exists() and not list(path.parent.glob("*.tmp*"))
    with np.load(path) as data, np.load(avatar.path / "masks.npz") as landmark:
        assert np.array_equal(data["boxes"], landmark["boxes"])  # same blend boxes
        bx1, by1, bx2, by2 = data["boxes"][0]
        assert data["mask0"].shape == (by2 - by1, bx2 - bx1)  # kept at full size
    assert len(stream.masks) == len(avatar.frames) and stream.masks[0].shape == (by2 - by1,) * 2
    v10 = MuseTalkNets(n.unet, n.vae, n.encoder, n.extractor, "v10", BiSeNet(19).eval())
    old = MuseTalkEngine(v10).open_stream(avatar)
    assert (avatar.path / "musetalk" / "masks-raw.npz").exists()  # v1.0 parses in "raw" mode
    # v1.0's crops stop at the chin: no extra margin below it, so their own latents.
    x1, y1, x2, y2 = avatar.boxes[0]
    assert tuple(old.boxes[0]) == (x1, y1, x2, y2 - 10)
    assert (avatar.path / "musetalk" / "latents-v10.npy").exists()
    assert len(list(render_speech(old, np.zeros(16000, np.int16)))) == 25
