"""Avatars from talking footage: the person's own mouths banked at preparation and served.

The footage here is made on the spot: the built-in face rendered saying sentences (its
mouth really opens and shuts, with the voice's own audio track), a silent idle render of
the same face, and edited versions of the talking one (a cut to a different face, frames
with no face).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from rtlipsync.engines.base import render_speech
from rtlipsync.engines.cpu import CpuEngine
from rtlipsync.engines.cpu.footage import FootageStream, footage_path, load_footage
from rtlipsync.face.avatar import Avatar, load_avatar, prepare_avatar
from rtlipsync.face.footage import FOOTAGE_VERSION
from rtlipsync.media.audio import load_audio
from rtlipsync.media.frames import FRAME_SAMPLES, SAMPLE_RATE
from rtlipsync.media.video import Mp4Writer, read_video_frames
from rtlipsync.render import render

from conftest import espeak_pcm, write_wav

SENTENCES = (
    "Bob and Pam may buy a map of the bamboo market. Father saw a large dog on the far hill. "
    "Who knew you could see the moon at noon? Eat each peach, then open the window wide."
)


@pytest.fixture(scope="module")
def talking_video(default_avatar: Avatar, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built-in face saying `SENTENCES` (about 11 s, own audio)."""
    out = tmp_path_factory.mktemp("footage") / "talking.mp4"
    return render("default", out, text=SENTENCES, progress=False).path


@pytest.fixture(scope="module")
def talking_avatar(talking_video: Path) -> Avatar:
    manifest = prepare_avatar("talker", talking_video, progress=False)
    assert manifest["footage"]["talking"], manifest["footage"]
    return load_avatar("talker")


def _rewrite(source: Path, out: Path, edit) -> Path:  # noqa: ANN001 - frame → frame
    """``source`` with each frame passed through ``edit(index, frame)``, same audio."""
    frames = list(read_video_frames(source))
    audio, _ = load_audio(source, SAMPLE_RATE)
    h, w = frames[0].shape[:2]
    with Mp4Writer(out, w, h, 25, SAMPLE_RATE) as writer:
        for i, frame in enumerate(frames):
            writer.write_video(edit(i, frame))
            writer.write_audio(audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
    return out


def test_talking_footage_is_banked_and_a_silent_idle_video_is_not(
    talking_avatar: Avatar, tmp_path: Path
) -> None:
    found = talking_avatar.manifest["footage"]
    assert found["version"] == FOOTAGE_VERSION
    assert found["mouths"] >= 150  # most of the ~11 s of frames
    lo, hi = found["opening_range"]
    assert lo < 0.01 and hi > 0.04  # shut lips and a properly open mouth are both banked
    assert found["fitted_seconds"] > 8  # learned from the footage's own voice
    assert found["message"].startswith(f"talking footage: {found['mouths']} mouths banked")
    assert isinstance(CpuEngine().open_stream(talking_avatar), FootageStream)

    silence = write_wav(tmp_path / "quiet.wav", np.zeros(4 * SAMPLE_RATE, np.int16), SAMPLE_RATE)
    idle = render("default", tmp_path / "idle.mp4", audio=silence, progress=False).path
    manifest = prepare_avatar("idler", idle, progress=False)
    assert manifest["footage"]["talking"] is False
    assert "does not talk" in manifest["footage"]["message"]
    avatar = load_avatar("idler")
    assert not footage_path(avatar).exists()
    assert not isinstance(CpuEngine().open_stream(avatar), FootageStream)


def test_the_bank_round_trips_through_the_avatar_store(
    talking_avatar: Avatar, talking_video: Path, tmp_path: Path
) -> None:
    bank = load_footage(talking_avatar)
    assert bank is not None and len(bank) == talking_avatar.manifest["footage"]["mouths"]
    assert bank.mapping.weights is not None  # learned, not the fallback
    patch = bank.patch(0)
    assert patch.shape[:2] == bank.mask.shape
    # Preparing the same source again is a no-op; a changed source is prepared again.
    before = footage_path(talking_avatar).stat().st_mtime_ns
    prepare_avatar("talker", talking_video, progress=False)
    assert footage_path(talking_avatar).stat().st_mtime_ns == before
    # The same name from changed footage (its first 4 s only): prepared again, a new bank.
    prepare_avatar("talker-2", talking_video, progress=False)
    first = load_footage(load_avatar("talker-2"))
    assert first is not None
    shorter = _rewrite(talking_video, tmp_path / "talking2.mp4", lambda i, f: f)
    frames = list(read_video_frames(shorter))[:100]
    audio, _ = load_audio(shorter, SAMPLE_RATE)
    cut = tmp_path / "talking-4s.mp4"
    with Mp4Writer(cut, frames[0].shape[1], frames[0].shape[0], 25, SAMPLE_RATE) as writer:
        for i, frame in enumerate(frames):
            writer.write_video(frame)
            writer.write_audio(audio[i * FRAME_SAMPLES : (i + 1) * FRAME_SAMPLES])
    manifest = prepare_avatar("talker-2", cut, progress=False)
    again = load_avatar("talker-2")
    bank = load_footage(again)
    assert bank is not None and bank is not first
    assert manifest["footage"]["mouths"] == len(bank) < len(first)
    assert int(bank.source_frames.max()) < 100  # only the new footage's frames
    # A bank of another layout version is not served (the avatar falls back to the drawn
    # mouth until it is prepared again).
    data = dict(np.load(footage_path(again)))
    data["version"] = np.array(FOOTAGE_VERSION + 1)
    np.savez(footage_path(again), **data)
    again.extras.clear()
    assert load_footage(again) is None
    assert not isinstance(CpuEngine().open_stream(again), FootageStream)
    # No temporary folders are left in the store.
    assert not [p for p in again.path.parent.iterdir() if p.name.startswith(".")]


def _bank_region(avatar: Avatar, frame: int) -> np.ndarray:
    """Where a banked mouth may land on ``frame``: the mask's box carried onto it."""
    bank = load_footage(avatar)
    assert bank is not None
    x, y, w, h = bank.box
    m = bank.placements[frame].astype(np.float64)
    corners = np.array([[x, y], [x + w, y], [x, y + h], [x + w, y + h]], np.float64)
    placed = corners @ m[:, :2].T + m[:, 2]
    inside = np.zeros(avatar.frames[frame].shape[:2], bool)
    x0, y0 = np.floor(placed.min(axis=0)).astype(int)
    x1, y1 = np.ceil(placed.max(axis=0)).astype(int)
    inside[max(y0, 0) : y1, max(x0, 0) : x1] = True
    return inside


def test_served_frames_change_only_inside_the_mouth_region_and_show_real_mouths(
    talking_avatar: Avatar,
) -> None:
    stream = CpuEngine().open_stream(talking_avatar)
    pcm = espeak_pcm("Mama made a lovely pie, and we ate it all at noon.")
    frames = list(render_speech(stream, pcm))
    openings = [f.mouth["open"] for f in frames]
    assert max(openings) > 0.3
    loop = talking_avatar.loop
    changed_outside = 0
    tiles = []
    for f in frames:
        source = int(loop[f.index % len(loop)])
        base = talking_avatar.frames[source]
        diff = np.abs(f.image.astype(int) - base.astype(int)).max(axis=2) > 0
        changed_outside += int((diff & ~_bank_region(talking_avatar, source)).sum())
        tiles.append(f.image[_bank_region(talking_avatar, source)].mean())
    assert changed_outside == 0
    # The shown mouths differ from frame to frame while speaking (not one frozen patch).
    assert np.std(tiles) > 0.5


def test_a_held_vowel_holds_its_teeth(talking_avatar: Avatar) -> None:
    """While the articulation holds still, the real mouth shown holds too: no flicker
    between banked frames of about the same shape (their teeth and lips differ)."""
    from rtlipsync.face import landmarks as lm

    loop = talking_avatar.loop
    means = []
    for vowel in ("Ah.", "Ooooh.", "Eeeee."):
        stream = CpuEngine().open_stream(talking_avatar)
        frames = list(render_speech(stream, espeak_pcm(vowel, wpm=40)))
        openings = np.array([f.mouth["open"] for f in frames])
        changes = []
        for i in range(1, len(frames)):
            held = abs(openings[i] - openings[i - 1]) < 0.05
            if not (held and min(openings[i - 1 : i + 1]) > 0.2):
                continue
            lips = talking_avatar.landmarks[int(loop[frames[i].index % len(loop)])]
            (x0, y0), (x1, y1) = (np.round(np.array(
                [f(lips[lm.UPPER_OUTER + lm.LOWER_OUTER], axis=0) for f in (np.min, np.max)]
            )).astype(int))  # fmt: skip
            step = frames[i].image.astype(int) - frames[i - 1].image.astype(int)
            changes.append(float(np.abs(step[y0:y1, x0:x1]).mean()))
        assert len(changes) >= 8, vowel  # the vowel is held for a third of a second or more
        means.append(np.mean(changes))
    # One vowel's figure depends on which mouths this footage banked, and the footage is
    # the offline voice's render, which differs by a few samples from run to run: over
    # eight fresh banks each vowel moved 3.6-9.9 levels, their mean 4.8-7.2. Choosing each
    # frame's mouths afresh (the flicker) gave 7.5, 13.5 and 12.0: a mean of 11.
    assert np.mean(means) < 9.0, means


def test_the_idle_loop_of_a_talking_avatar_keeps_its_mouth_shut(talking_avatar: Avatar) -> None:
    from rtlipsync.face.landmarks import FaceLandmarker, lip_gap

    stream = CpuEngine().open_stream(talking_avatar)
    shown, own = [], []
    with FaceLandmarker(video=True) as lm:
        for _ in range(100):  # 4 s of the loop: the footage talks all through it
            frame = stream.idle()
            shown.append(lip_gap(lm.detect(frame.image)))
    with FaceLandmarker(video=True) as lm:
        for k in range(100):
            own.append(lip_gap(lm.detect(talking_avatar.frames[int(talking_avatar.loop[k])])))
    assert max(own) > 0.04  # the footage's own mouth opens in these frames
    assert max(shown) < 0.015 and np.median(shown) < 0.008  # the idle mouth stays shut


def test_reset_mid_word_returns_to_the_resting_mouth_without_a_jump(
    talking_avatar: Avatar,
) -> None:
    stream = CpuEngine().open_stream(talking_avatar)
    bank = load_footage(talking_avatar)
    assert bank is not None
    pcm = espeak_pcm("Father saw a large dog on the far hill.")
    frames = list(render_speech(stream, pcm[: len(pcm) // 2]))
    assert frames
    stream.reset()
    first, second = stream.idle(), stream.idle()
    # The idle frames show the avatar's own frame with the resting (shut) mouth.
    loop = talking_avatar.loop
    region = _bank_region(talking_avatar, int(loop[second.index % len(loop)]))
    last = frames[-1].image.astype(int)
    step1 = np.abs(first.image.astype(int) - last)[region].mean()
    step2 = np.abs(second.image.astype(int) - first.image.astype(int))[region].mean()
    assert step1 < 25 and step2 < 25  # no jump: it closes over a frame or two
    assert not stream.pending
    closed = bank.features[bank.rest, 0]
    # Among the person's most closed mouths (many read exactly 0; a lip gap of 0.002 face
    # heights is under a pixel here, so ties within it are not told apart).
    assert closed <= np.quantile(bank.features[:, 0], 0.1) + 0.002


def test_bad_footage_gets_a_clear_message_and_no_bank(talking_video: Path, tmp_path: Path) -> None:
    import cv2

    # A cut to a different face for most of the clip: the second shot is the face made
    # wider (another face geometry) with other skin, at another place in the frame. (Shape
    # alone does not tell people apart: a jump cut of one person moves it as far.)
    def cut(i: int, frame: np.ndarray) -> np.ndarray:
        if i < 100:
            return frame
        h, w = frame.shape[:2]
        wide = cv2.resize(frame, (int(w * 1.45), h))[:, (int(w * 1.45) - w) // 2 :][:, :w]
        paler = np.clip(wide.astype(np.float32) * np.array([1.0, 0.9, 0.75]), 0, 255)
        return np.ascontiguousarray(paler.astype(np.uint8))

    other = _rewrite(talking_video, tmp_path / "cut.mp4", cut)
    found = prepare_avatar("cutter", other, progress=False)["footage"]
    assert found["talking"] is False
    assert "not banked" in found["message"] and "another face or shot" in found["message"]
    assert not footage_path(load_avatar("cutter")).exists()

    # No face in most frames.
    blank = _rewrite(
        talking_video, tmp_path / "blank.mp4", lambda i, f: f if i < 60 else np.zeros_like(f)
    )
    found = prepare_avatar("blank", blank, progress=False)["footage"]
    assert found["talking"] is False and "not banked" in found["message"]
    manifest = json.loads((load_avatar("blank").path / "manifest.json").read_text())
    assert manifest["footage"] == found


def _zoomed(frame: np.ndarray, zoom: float, shift: float) -> np.ndarray:
    """``frame`` framed closer (zoom > 1) and moved sideways by ``shift`` of its width."""
    import cv2

    h, w = frame.shape[:2]
    m = np.array([[zoom, 0, (1 - zoom) * w / 2 + shift * w], [0, zoom, (1 - zoom) * h / 2]])
    return cv2.warpAffine(frame, m, (w, h), borderMode=cv2.BORDER_REFLECT)


def test_a_jump_cut_of_the_same_person_is_banked_and_another_face_is_not(
    talking_video: Path, tmp_path: Path
) -> None:
    """An edited talking video cuts between framings of one person: every shot is banked.
    A cut to another face of nearly the same proportions (here: the face reframed and with
    other skin and lips) is not."""
    from rtlipsync.engines.cpu.footage import FootageBank

    closer = _rewrite(
        talking_video, tmp_path / "jump.mp4",
        lambda i, f: f if i < 90 else _zoomed(f, 1.25, 0.05),
    )  # fmt: skip
    found = prepare_avatar("jumper", closer, progress=False)["footage"]
    assert found["talking"] and found["message"].startswith("talking footage:"), found
    bank = FootageBank(footage_path(load_avatar("jumper")))
    frames = np.asarray(bank.source_frames)
    assert (frames < 90).sum() >= 30 and (frames >= 90).sum() >= 60  # both shots banked
    assert found["mouths"] >= 150
    # Placements are smoothed within a shot, not across the cut: the frames on either side
    # each paste the mouth at their own shot's size (the second shot is 1.25x closer).
    size = np.sqrt(np.abs(np.linalg.det(bank.placements[:, :, :2].astype(np.float64))))
    assert abs(size[89] / size[86] - 1) < 0.03 and abs(size[90] / size[93] - 1) < 0.03
    assert 1.15 < size[90] / size[89] < 1.35

    def other(i: int, frame: np.ndarray) -> np.ndarray:
        if i < 60:
            return frame
        tinted = frame.astype(np.float32) * np.array([0.7, 0.8, 1.0])  # BGR: warmer, darker
        return _zoomed(np.clip(tinted, 0, 255).astype(np.uint8), 1.1, -0.03)

    found = prepare_avatar("switcher", _rewrite(talking_video, tmp_path / "o.mp4", other),
                           progress=False)["footage"]  # fmt: skip
    assert found["talking"] is False and "another face or shot" in found["message"], found


def test_the_footage_measure_holds_out_either_end(talking_video: Path) -> None:
    """`rtlipsync eval lips --footage [--reverse]`: the avatar learns from one end of the
    clip and is compared with the other, which it never saw; the built-in face's own talking
    render is a person whose mouth the bank can follow."""
    from rtlipsync.eval.lips import TRAIN_SHARE, footage_truth

    n = len(list(read_video_frames(talking_video)))
    report = footage_truth(talking_video, reverse=True).report
    assert abs(report.frames - (n - int(n * TRAIN_SHARE))) <= 2  # the start, compared
    assert report.r > 0.4 and report.closed_agreement is not None, report
    assert load_avatar(f"footage-rev-{talking_video.stem}").manifest["footage"]["talking"]
