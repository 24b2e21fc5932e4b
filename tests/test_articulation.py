"""The articulation layer: visemes from IPA, text aligned to audio, the mouth from sound alone.

Speech comes from espeak-ng in voices and at rates the aligner's own spelling does not use,
and the truth is espeak-ng's phoneme events for that audio.
"""

from __future__ import annotations

import numpy as np
import pytest

from rtlipsync.articulation import Articulator
from rtlipsync.articulation.align import TextAligner, text_visemes, voice_for
from rtlipsync.articulation.phonemes import INDEX, classify, is_bilabial, viseme_of
from rtlipsync.media.frames import FPS, SAMPLE_RATE, Phoneme
from rtlipsync.speech.espeak import EspeakTTS

SENTENCES = {
    "en": "Maybe Bob will bring a map of the pub.",
    "zh": "我们明天去北京买面包。",
    "ja": "ぼくはまいにちパンをたべます。",
}
VOICES = {"en": "en-us+f3", "zh": "cmn+m2", "ja": "ja+f2"}


def spoken(text: str, voice: str, wpm: int = 140):
    return EspeakTTS(rate_wpm=wpm).synthesize(text, voice).at_rate(SAMPLE_RATE)


def mouths(pcm: np.ndarray, text: str | None = None, phonemes=(), chunk: int = 320, **kw):
    """Every frame's mouth for one utterance fed in ``chunk``-sample pieces."""
    a = Articulator(**kw)
    out = []
    for i in range(0, len(pcm), chunk):
        mine = tuple(
            Phoneme(p.symbol, p.start - i / SAMPLE_RATE, p.duration)
            for p in phonemes
            if i / SAMPLE_RATE <= p.start < (i + chunk) / SAMPLE_RATE
        )
        a.push(pcm[i : i + chunk], mine, text=text if i == 0 else None)
        while a.frames_ready():
            out.append(a.take())
    a.finish()
    while a.frames_ready():
        out.append(a.take())
    return out


def shut_share(speech, frames) -> float:
    bilabials = [
        int((p.start + p.duration / 2) * FPS)
        for p in speech.phonemes
        if is_bilabial(p.symbol) and p.duration >= 0.03
    ]
    assert bilabials
    return sum(frames[f].open == 0.0 for f in bilabials) / len(bilabials)


def test_ipa_visemes() -> None:
    assert classify("b") == classify("m") == classify("p") == ["PBM"]
    assert classify("ˈaɪ") == ["A", "I"]  # a diphthong glides
    assert classify("tʃ") == ["SH"] and classify("tɕh") == ["SH"]
    assert classify("ˈuː") == ["U"] and classify("ɯᵝ") == ["U"]  # Japanese u too
    assert classify("o̞") == ["O"] and classify("ä") == ["A"]
    assert classify("") == [] and classify("ˈ") == []
    assert viseme_of("f").teeth and viseme_of("m").closed and not viseme_of("a").closed
    assert viseme_of("i").width > 0.5 > -0.5 > viseme_of("u").width
    assert viseme_of("a").open > viseme_of("e").open > viseme_of("i").open


@pytest.mark.parametrize("language", ["en", "zh", "ja"])
def test_text_is_spelled_in_visemes(language: str) -> None:
    seq = text_visemes(SENTENCES[language])
    assert INDEX["PBM"] in seq and len(seq) >= 8
    assert all(a != b for a, b in zip(seq, seq[1:], strict=False))  # runs merged


@pytest.mark.parametrize(
    ("text", "voice"),
    [("Мама мыла раму", "ru"), ("밥 먹었어요", "ko"), ("Γεια σου μπαμπά", "el"), ("mum", "en-us")],
)
def test_any_script_is_read_by_a_voice_of_its_own(text: str, voice: str) -> None:
    assert voice_for(text) == voice
    assert INDEX["PBM"] in text_visemes(text)
    assert text_visemes("hello mum", "no-such-voice") == text_visemes("hello mum")


@pytest.mark.parametrize("language", ["en", "zh", "ja"])
def test_known_text_aligned_to_another_voice_shuts_the_lips(language: str) -> None:
    """The words are known, the voice and pace are not (a streamed TTS, a transcript)."""
    speech = spoken(SENTENCES[language], VOICES[language], wpm=130)
    frames = mouths(speech.pcm, text=SENTENCES[language])
    assert len(frames) == -(-len(speech.pcm) // 640)
    assert shut_share(speech, frames) >= 0.9
    # ... and opens between them.
    assert max(f.open for f in frames) > 0.5


def test_viterbi_recovers_timings_from_noisy_posteriors() -> None:
    """The aligner on its own: posteriors that say the right viseme only 60 % of the time
    (the rest spread at random) still give the truth's timing almost everywhere."""
    speech = spoken(SENTENCES["en"], "en-us+m3", wpm=120)
    truth = np.full(len(speech.pcm) // 160, INDEX["sil"])
    for p in speech.phonemes:
        names = classify(p.symbol)
        edges = np.linspace(p.start, p.start + p.duration, len(names) + 1)
        for k, name in enumerate(names):
            truth[round(edges[k] * 100) : round(edges[k + 1] * 100)] = INDEX[name]
    rng = np.random.default_rng(0)
    aligner = TextAligner()
    aligner.add_text(SENTENCES["en"])
    aligner.end_text()
    agree = []
    for h, t in enumerate(truth):
        post = rng.dirichlet(np.ones(11)) * 0.4
        post[t if rng.random() < 0.6 else rng.integers(11)] += 0.6
        aligner.step(h, post)
        if h >= 8:  # read each hop 8 hops later, as the articulator does
            got = aligner.path(range(h - 8, h - 7))[0]
            if truth[h - 8] != INDEX["sil"]:
                agree.append(got == truth[h - 8])
    assert np.mean(agree) > 0.8, np.mean(agree)


def test_paraphrase_the_audio_wins() -> None:
    """The transcript names bilabials the audio never says: the mouth does not invent them,
    and it still closes on the ones the audio has."""
    audio_text = "I saw a lovely yellow kite, so I told Sally."
    speech = spoken(audio_text, "en-us+f2")
    frames = mouths(speech.pcm, text="Maybe my big brown puppy may bump into the pram.")
    truth_vowels = [
        int((p.start + p.duration / 2) * FPS)
        for p in speech.phonemes
        if (names := classify(p.symbol)) and names[0] in ("A", "E", "O") and p.duration > 0.06
    ]
    shut_on_vowels = np.mean([frames[f].open == 0.0 for f in truth_vowels])
    assert shut_on_vowels <= 0.15, shut_on_vowels
    # A dropped word: the transcript lacks "Bob", the audio has it.
    speech = spoken("Maybe Bob will bring a map.", "en-us+m1")
    frames = mouths(speech.pcm, text="Maybe will bring a map.")
    assert shut_share(speech, frames) >= 0.75


def test_audio_alone_shuts_the_lips_in_several_languages() -> None:
    shares = []
    for language, text in SENTENCES.items():
        speech = spoken(text, VOICES[language])
        shares.append(shut_share(speech, mouths(speech.pcm)))
    assert min(shares) >= 0.7 and np.mean(shares) >= 0.8, shares


def test_streamed_equals_offline() -> None:
    speech = spoken(SENTENCES["en"], "en-us+f4")
    for kw in ({}, {"text": SENTENCES["en"]}, {"phonemes": speech.phonemes}):
        whole = mouths(speech.pcm, chunk=len(speech.pcm), **kw)
        for chunk in (160, 777, 4000):
            assert mouths(speech.pcm, chunk=chunk, **kw) == whole, (kw.keys(), chunk)


def test_text_arriving_in_pieces_equals_text_up_front() -> None:
    """A transcript streams word by word, ahead of the audio: the same mouth as the whole."""
    speech = spoken(SENTENCES["en"], "en-us+m2")
    whole = mouths(speech.pcm, text=SENTENCES["en"])
    a = Articulator()
    words = SENTENCES["en"].split(" ")
    out = []
    step = len(speech.pcm) // (2 * len(words))
    for i in range(0, len(speech.pcm), step):
        k = i // step
        delta = (words[k] + " ") if k < len(words) else None
        a.push(speech.pcm[i : i + step], text=delta)
        while a.frames_ready():
            out.append(a.take())
    a.finish()
    while a.frames_ready():
        out.append(a.take())
    shut = [f.open == 0 for f in out]
    assert len(out) == len(whole)
    assert np.mean([x == (f.open == 0) for x, f in zip(shut, whole, strict=True)]) > 0.9


def test_reset_mid_phoneme_starts_clean() -> None:
    speech = spoken(SENTENCES["en"], "en-us")
    a = Articulator()
    a.push(speech.pcm[: int(0.93 * SAMPLE_RATE)], text=SENTENCES["en"])  # mid-word
    while a.frames_ready():
        a.take()
    a.reset()
    assert a.frames_ready() == 0 and not a.aligner.active
    a.push(speech.pcm, text=SENTENCES["en"])
    a.finish()
    after = []
    while a.frames_ready():
        after.append(a.take())
    assert after == mouths(speech.pcm, text=SENTENCES["en"], chunk=len(speech.pcm))


def test_silence_and_noise_stay_shut_and_still() -> None:
    rng = np.random.default_rng(1)
    quiet = (rng.normal(0, 0.003, 3 * SAMPLE_RATE) * 32767).astype(np.int16)  # a quiet room
    for pcm in (np.zeros(3 * SAMPLE_RATE, np.int16), quiet):
        frames = mouths(pcm)
        assert all(f.open == 0.0 and abs(f.width) < 0.05 for f in frames)
    # After speech, the lips close within a few frames and stay closed.
    speech = spoken("Hello there.", "en-us")
    tail = np.concatenate([speech.pcm, np.zeros(SAMPLE_RATE, np.int16)])
    frames = mouths(tail)
    end = -(-len(speech.pcm) // 640)
    assert all(f.open == 0.0 for f in frames[end + 6 :])


def test_the_mouth_leads_the_sound_within_the_declared_lookahead() -> None:
    a = Articulator()
    assert 0.04 <= a.lookahead <= 0.2
    # The lips part for a vowel before the vowel is heard.
    pcm = spoken("aaaa", "en-us").pcm
    lead = np.concatenate([np.zeros(SAMPLE_RATE // 2, np.int16), pcm])
    onset = next(i for i in range(0, len(lead), 160) if np.abs(lead[i : i + 160]).max() > 1000)
    frames = mouths(lead)
    first_open = next(k for k, f in enumerate(frames) if f.open > 0.05)
    assert first_open * 640 < onset  # the frame that first opens starts before the sound


def test_the_lips_meet_before_a_bilabial_is_heard() -> None:
    """A closure leads its sound as every shape does: the frame showing the moment `LEAD`
    before a bilabial's middle is already shut (real lips meet before the closure sounds)."""
    from rtlipsync.articulation.track import HOP, LEAD

    speech = spoken("Maybe Bob bought a map of the pub, mum.", "en-us", wpm=150)
    frames = mouths(speech.pcm, phonemes=speech.phonemes)
    early = [
        int((p.start + p.duration / 2 - LEAD * HOP / SAMPLE_RATE) * FPS)
        for p in speech.phonemes
        if is_bilabial(p.symbol) and p.duration >= 0.03
    ]
    assert len(early) >= 6
    assert all(frames[f].open == 0.0 for f in early), [frames[f].open for f in early]


def test_aligner_handles_text_with_nothing_to_say() -> None:
    aligner = TextAligner()
    aligner.add_text("... !!! ")
    aligner.end_text()
    assert not aligner.active
    assert aligner.path(range(0, 10)) == [None] * 10


def test_text_that_comes_after_the_audio_is_aligned_from_the_start() -> None:
    """A transcript that lags the audio by a second (two words): once it is in, the frames are those
    the text would have given had it come first (after the frame-to-frame inertia of the
    frames shown without it has faded)."""
    speech = spoken(SENTENCES["en"], "en-us+f5", wpm=130)
    upfront = mouths(speech.pcm, text=SENTENCES["en"])
    a = Articulator()
    out: list = []
    before = None
    for i in range(0, len(speech.pcm), 320):
        if i == SAMPLE_RATE:
            before = len(out)  # frames already shown without the words
        a.push(speech.pcm[i : i + 320], text=SENTENCES["en"] if i == SAMPLE_RATE else None)
        while a.frames_ready():
            out.append(a.take())
    a.finish()
    while a.frames_ready():
        out.append(a.take())
    assert before is not None and 5 < before < len(out) - 20
    settled = before + 6
    for got, want in zip(out[settled:], upfront[settled:], strict=True):
        assert got.open == pytest.approx(want.open, abs=1e-3)
        assert got.width == pytest.approx(want.width, abs=1e-3)
