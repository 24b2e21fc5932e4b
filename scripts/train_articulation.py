"""Train the acoustic viseme model that ships in ``rtlipsync/articulation/acoustic.npz``.

The model hears which viseme (lips shut, rounded, open, ...) is being said every 10 ms, for
speech with no text. It is trained on speech made here, with exact phoneme timings, so no
corpus and no download are needed:

- espeak-ng (the ``espeakng-loader`` wheel the product uses): random word sequences drawn
  from ``wordfreq``'s lists in 25 languages, 40 voice variants, random rate and pitch; its
  IPA phoneme events give the labels;
- Festival (Debian's ``festival`` and ``festvox-*`` packages): 13 voices in 7 languages built
  from recordings of real speakers (diphone, unit-selection and HTS voices), so real voices'
  spectra are heard too; its segment files give the labels.

Utterances are joined with pauses, then every copy is made different: speed (tempo and
formants together), reverberation, equalisation, band limits, noise (white, pink, brown,
other speech), level, clipping, and vocal tract length perturbation in the mel filters. The
features are the package's own (`log_mel` and `Normalizer`), so training sees exactly what
the product computes.

    apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts \\
        festvox-czech-dita festvox-czech-machac festvox-czech-krb festvox-czech-ph \\
        festvox-suopuhe-lj festvox-suopuhe-mv festvox-italp16k festvox-itapc16k \\
        festvox-ru festvox-ca-ona-hts
    bash scripts/install.sh test && .venv/bin/pip install -e ".[train]"   # torch (CPU), wordfreq
    .venv/bin/python scripts/train_articulation.py [--cache DIR]   # ~35 min on 2 cores

It writes ``src/rtlipsync/articulation/acoustic.npz`` (``--out`` to put it elsewhere). The
shipped file was made by this script with its defaults (seed 0; validation accuracy 0.819);
a re-run gives a model as good, not the same bytes (jobs lost to an espeak-ng crash are
drawn again, and which ones depends on timing).

It prints the validation accuracy (on held-out synthetic speech) as it goes and the per-class
recall at the end; what the model does on real people is measured by ``rtlipsync eval lips``.
"""

from __future__ import annotations

import argparse
import multiprocessing
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.signal import butter, fftconvolve, lfilter

from rtlipsync.articulation.acoustic import HOP, WIN, Normalizer, log_mel, mel_filters
from rtlipsync.articulation.phonemes import INDEX, VISEMES, classify
from rtlipsync.media.audio import load_audio, resample
from rtlipsync.media.frames import SAMPLE_RATE

FUTURE = 8  # hops of look-ahead the network gets (80 ms)
LAYERS = ((5, 1), (5, 2), (5, 4), (5, 8))  # (kernel, dilation) of the hidden layers
WIDTH = 96
SIL = INDEX["sil"]

# espeak-ng voice for each wordfreq language.
ESPEAK_LANGUAGES = {
    "en": "en-us", "zh": "cmn", "ja": "ja", "es": "es", "fr": "fr", "de": "de", "it": "it",
    "pt": "pt", "ru": "ru", "pl": "pl", "nl": "nl", "tr": "tr", "ko": "ko", "hi": "hi",
    "ar": "ar", "vi": "vi", "id": "id", "sv": "sv", "cs": "cs", "el": "el", "fi": "fi",
    "hu": "hu", "ro": "ro", "uk": "uk", "fa": "fa",
}  # fmt: skip
ESPEAK_VARIANTS = (
    "", "+f1", "+f2", "+f3", "+f4", "+f5", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7",
    "+klatt", "+klatt2", "+klatt3", "+klatt4", "+klatt6", "+Alicia", "+Andy", "+adam",
    "+anika", "+belinda", "+boris", "+david", "+ed", "+edward", "+grandma", "+iven", "+john",
    "+linda", "+max", "+michel", "+norbert", "+steph", "+quincy", "+rob", "+robert",
    "+steph2", "+travis", "+victor", "+zac",
)  # fmt: skip
# Festival voice: (wordfreq language, the encoding its text front end reads).
FESTIVAL_VOICES = {
    "voice_kal_diphone": ("en", "latin-1"),
    "voice_ked_diphone": ("en", "latin-1"),
    "voice_cmu_us_slt_arctic_hts": ("en", "latin-1"),
    "voice_czech_dita": ("cs", "iso-8859-2"),
    "voice_czech_machac": ("cs", "iso-8859-2"),
    "voice_czech_krb": ("cs", "iso-8859-2"),
    "voice_czech_ph": ("cs", "iso-8859-2"),
    "voice_hy_fi_mv_diphone": ("fi", "latin-1"),
    "voice_suo_fi_lj_diphone": ("fi", "latin-1"),
    "voice_lp_diphone": ("it", "latin-1"),
    "voice_pc_diphone": ("it", "latin-1"),
    "voice_msu_ru_nsh_clunits": ("ru", "utf-8"),
    "voice_upc_ca_ona_hts": ("ca", "latin-1"),
}
# Festival's phone names: English voices use ARPAbet, the others SAMPA-like letters.
ARPABET = {
    "aa": ["A"], "ae": ["A"], "ah": ["E"], "ao": ["O"], "aw": ["A", "U"], "ax": ["E"],
    "axr": ["E"], "ay": ["A", "I"], "eh": ["E"], "er": ["E"], "ey": ["E", "I"], "ih": ["I"],
    "iy": ["I"], "ow": ["O", "U"], "oy": ["O", "I"], "uh": ["U"], "uw": ["U"], "b": ["PBM"],
    "p": ["PBM"], "m": ["PBM"], "em": ["PBM"], "f": ["FV"], "v": ["FV"], "w": ["W"],
    "y": ["I"], "sh": ["SH"], "zh": ["SH"], "ch": ["SH"], "jh": ["SH"],
}  # fmt: skip
SAMPA = {
    "a": "A", "A": "A", "{": "A", "ae": "A", "aa": "A", "e": "E", "E": "E", "@": "E",
    "ax": "E", "ay": "E", "ee": "E", "o": "O", "O": "O", "2": "O", "9": "O", "oo": "O",
    "u": "U", "U": "U", "uu": "U", "i": "I", "I": "I", "j": "I", "ii": "I", "p": "PBM",
    "b": "PBM", "m": "PBM", "f": "FV", "v": "FV", "w": "W", "S": "SH", "Z": "SH", "tS": "SH",
    "dZ": "SH", "sh": "SH", "zh": "SH", "ch": "SH", "sch": "SH",
}  # fmt: skip


def festival_visemes(phone: str, language: str) -> list[str]:
    """Viseme names of one Festival phone."""
    if phone in ("pau", "#", "_", "h#", "sil", "brth"):
        return ["sil"]
    p = phone.rstrip("0123456789").replace(":", "").replace("~", "")
    if not p:
        return ["C"]
    if language == "en":
        return ARPABET.get(p, ["C"])
    if language == "fi" and p == "y":
        return ["U"]  # Finnish y is a rounded front vowel
    if p in SAMPA:
        return [SAMPA[p]]
    if language == "ru" and p[:2] in ("sh", "zh", "ch"):
        return ["SH"]
    first = p.rstrip("j")[:1] or p[:1]  # Russian doubles letters for palatal consonants
    return [SAMPA.get(first, "C")] if first in "aeiouyAEOUI@pbmfvw" else ["C"]


def hop_labels(segments: list[tuple[float, float, list[str]]], hops: int) -> np.ndarray:
    """Per-hop viseme indices from (start s, end s, viseme names) segments; silence
    elsewhere. A segment naming two visemes (a diphthong) is split between them."""
    labels = np.full(hops, SIL, np.int64)
    for start, end, names in segments:
        edges = np.linspace(start, end, len(names) + 1)
        for k, name in enumerate(names):
            a, b = (int(round(e * 100)) for e in edges[k : k + 2])
            labels[max(0, a) : max(0, min(hops, b))] = INDEX[name]
    return labels


def sentence(rng: random.Random, words: list[str], cjk: bool) -> str:
    n = rng.randint(3, 14)
    vocabulary = words[: rng.choice([300, len(words)])]
    text = ("" if cjk else " ").join(rng.choice(vocabulary) for _ in range(n))
    return text + rng.choice(["", "", ".", ",", "?", "!"])


def espeak_batch(args: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` espeak-ng utterances at 16 kHz with per-hop labels."""
    import wordfreq

    from rtlipsync.speech import espeak

    seed, n = args
    rng = random.Random(seed)
    tts = espeak.EspeakTTS()
    lists = {lang: wordfreq.top_n_list(lang, 3000) for lang in ESPEAK_LANGUAGES}
    out = []
    while len(out) < n:
        lang = "en" if rng.random() < 0.35 else rng.choice(list(ESPEAK_LANGUAGES))
        text = sentence(rng, lists[lang], lang in ("zh", "ja"))
        tts.rate_wpm = rng.randint(120, 230)
        lib = espeak._Engine.load()
        with espeak._Engine.lock:
            lib.espeak_SetParameter(3, rng.randint(15, 85), 0)  # pitch
            lib.espeak_SetParameter(4, rng.randint(10, 90), 0)  # pitch range
        try:
            speech = tts.synthesize(text, ESPEAK_LANGUAGES[lang] + rng.choice(ESPEAK_VARIANTS))
        except Exception:  # noqa: BLE001 - a variant a language lacks: draw another
            continue
        if len(speech.pcm) < 4000:
            continue
        speed = rng.uniform(0.88, 1.12)  # formants and tempo together
        pcm = resample(speech.pcm.astype(np.float32) / 32768, int(speech.sample_rate * speed),
                       SAMPLE_RATE)  # fmt: skip
        segments = [
            (p.start / speed, (p.start + p.duration) / speed, classify(p.symbol))
            for p in speech.phonemes
        ]
        out.append((pcm.astype(np.float32), hop_labels(segments, len(pcm) // HOP)))
    return out


def festival_batch(args: tuple[int, int]) -> list[tuple[np.ndarray, np.ndarray]]:
    """``n`` utterances from every Festival voice, with per-hop labels."""
    import wordfreq

    seed, n = args
    rng = random.Random(seed)
    out = []
    for voice, (lang, encoding) in FESTIVAL_VOICES.items():
        words = [w for w in wordfreq.top_n_list(lang, 4000) if w.isalpha()]
        tmp = Path(tempfile.mkdtemp())
        try:
            lines = [f"({voice})"]
            for i in range(n):
                text = sentence(rng, words, False).replace('"', "")
                try:
                    text.encode(encoding)
                except UnicodeEncodeError:
                    continue
                lines.append(
                    f'(set! utt (utt.synth (Utterance Text "{text}")))'
                    f'(utt.save.wave utt "{tmp}/{i}.wav")(utt.save.segs utt "{tmp}/{i}.segs")'
                )
            (tmp / "run.scm").write_text("\n".join(lines), encoding=encoding, errors="replace")
            subprocess.run(["festival", "-b", str(tmp / "run.scm")], capture_output=True)
            for i in range(n):
                if not (tmp / f"{i}.segs").exists():
                    continue
                audio, rate = load_audio(tmp / f"{i}.wav")
                speed = rng.uniform(0.9, 1.1)
                pcm = resample(audio, int(rate * speed), SAMPLE_RATE).astype(np.float32)
                segments, previous = [], 0.0
                for line in (tmp / f"{i}.segs").read_text(errors="replace").splitlines():
                    fields = line.split()
                    if line.startswith("#") or len(fields) != 3:
                        continue
                    end = float(fields[0]) / speed
                    segments.append((previous, end, festival_visemes(fields[2], lang)))
                    previous = end
                out.append((pcm, hop_labels(segments, len(pcm) // HOP)))
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def map_isolated(fn, jobs: list[tuple], workers: int) -> list:  # noqa: ANN001
    """``fn`` over ``jobs`` in fresh worker processes, one job each. espeak-ng 1.52 can crash
    the process on some voice switches; a job that crashes is drawn again with another seed
    (once), so one bad sentence never stops the run."""
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")
    results, todo = [], list(jobs)
    for _ in range(2):  # the jobs, then those lost to a crash
        failed = []
        with ProcessPoolExecutor(workers, mp_context=context, max_tasks_per_child=1) as pool:
            futures = [(job, pool.submit(fn, job)) for job in todo]
            for job, future in futures:
                try:
                    results.extend(future.result())
                except BrokenProcessPool:
                    failed.append(job)
        if not failed:
            break
        print(f"{len(failed)} job(s) lost to a crashed worker; drawing them again")
        todo = [(seed + 100_000, n) for seed, n in failed]
    return results


def join(rng: np.random.Generator, parts: list[tuple[np.ndarray, np.ndarray]]):
    """1-3 utterances with pauses before, between and after (all labelled silence)."""
    audio, labels = [], []
    for k in range(len(parts) + 1):
        gap = int(rng.uniform(0.03, 1.2 if k < len(parts) else 0.8) * 100) * HOP
        audio.append(np.zeros(gap, np.float32))
        labels.append(np.full(gap // HOP, SIL, np.int64))
        if k < len(parts):
            pcm, lab = parts[k]
            n = len(pcm) // HOP * HOP
            audio.append(pcm[:n])
            labels.append(lab[: n // HOP])
    return np.concatenate(audio), np.concatenate(labels)


def noise(rng: np.random.Generator, n: int, kind: str, pool: list) -> np.ndarray:
    if kind == "babble":  # other speech
        out = np.zeros(n, np.float32)
        for _ in range(rng.integers(1, 5)):
            other = np.resize(pool[rng.integers(len(pool))][0], n)
            out += other / (np.sqrt(np.mean(other**2)) + 1e-9)
        return out
    white = rng.standard_normal(n)
    if kind == "pink":
        white = lfilter([0.0499, -0.0960, 0.0506, -0.0044], [1, -2.4950, 2.0173, -0.5222], white)
    elif kind == "brown":
        white = lfilter([1, -1], [1, -0.999], np.cumsum(white))
    return white.astype(np.float32)


def augment(rng: np.random.Generator, y: np.ndarray, pool: list) -> np.ndarray:
    """One random recording condition."""
    if rng.random() < 0.5:  # a room
        rt60 = rng.uniform(0.1, 0.7)
        t = np.arange(int(SAMPLE_RATE * rt60)) / SAMPLE_RATE
        ir = rng.standard_normal(len(t)) * np.exp(-6.9 * t / rt60)
        ir[0] = 1.0
        y = fftconvolve(y, ir / np.sqrt((ir**2).sum()))[: len(y)]
    if rng.random() < 0.5:  # a microphone's tilt
        a = rng.uniform(-0.9, 0.9)
        y = lfilter([1, -a], [1], y) if rng.random() < 0.5 else lfilter([1], [1, -0.7 * a], y)
    if rng.random() < 0.3:  # a narrow channel
        b, a = butter(4, rng.uniform(3400, 7500) / (SAMPLE_RATE / 2))
        y = lfilter(b, a, y)
    if rng.random() < 0.2:
        b, a = butter(2, rng.uniform(80, 300) / (SAMPLE_RATE / 2), "high")
        y = lfilter(b, a, y)
    y = y / (np.sqrt(np.mean(y**2)) + 1e-9)
    if rng.random() < 0.75:
        z = noise(rng, len(y), str(rng.choice(["white", "pink", "brown", "babble"])), pool)
        y = y + z * 10 ** (-rng.uniform(0, 40) / 20) / (np.sqrt(np.mean(z**2)) + 1e-9)
    y = y * 10 ** (rng.uniform(-35, -8) / 20)
    if rng.random() < 0.3:
        y = np.clip(y * rng.uniform(1, 4), -1, 1)
    return y.astype(np.float32)


def windows(y: np.ndarray) -> np.ndarray:
    """Hop h's window is centred on sample h*HOP + HOP/2, as in the product."""
    lead = WIN // 2 - HOP // 2
    padded = np.concatenate([np.zeros(lead, np.float32), y, np.zeros(WIN, np.float32)])
    return np.lib.stride_tricks.sliding_window_view(padded, WIN)[::HOP][: len(y) // HOP]


def features(args: tuple) -> list[tuple[np.ndarray, np.ndarray]]:
    """Normalised features of ``copies`` versions of each example (the first one clean)."""
    seed, examples, prior, copies, pool = args
    rng = np.random.default_rng(seed)
    out = []
    for y, labels in examples:
        for c in range(copies):
            clean = c == 0
            audio = y * 0.1 if clean else augment(rng, y, pool)
            warp = 1.0 if clean else rng.uniform(0.85, 1.18)
            f = Normalizer(prior)(log_mel(windows(audio), mel_filters(warp)))
            n = min(len(f), len(labels))
            out.append((f[:n], labels[:n]))
    return out


def build_net(torch, n_in: int, n_out: int):  # noqa: ANN001, ANN201
    nn = torch.nn
    spec = [(n_in, WIDTH, *LAYERS[0])] + [(WIDTH, WIDTH, k, d) for k, d in LAYERS[1:]]
    spec.append((WIDTH, n_out, 1, 1))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.spec = spec
            self.convs = nn.ModuleList(nn.Conv1d(i, o, k, dilation=d) for i, o, k, d in spec)
            self.span = sum((k - 1) * d for _, _, k, d in spec)

        def forward(self, x):  # noqa: ANN001, ANN202 - (B, n_in, T + span): causal
            for i, conv in enumerate(self.convs):
                x = conv(x)
                if i < len(self.convs) - 1:
                    x = torch.relu(x)
            return x

    return Net()


def main() -> None:
    import torch

    here = Path(__file__).resolve().parents[1]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default_out = here / "src/rtlipsync/articulation/acoustic.npz"
    parser.add_argument("--out", type=Path, default=default_out)
    parser.add_argument("--espeak", type=int, default=4000, help="espeak-ng utterances")
    parser.add_argument("--festival", type=int, default=400, help="utterances per Festival voice")
    parser.add_argument("--copies", type=int, default=3, help="versions of each example")
    parser.add_argument("--steps", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--cache", type=Path, help="folder to keep the generated speech in, for another run"
    )
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    t0 = time.time()
    cache = args.cache and args.cache / f"speech-{args.seed}-{args.espeak}-{args.festival}.npy"
    if cache and cache.is_file():
        utterances, voiced = np.load(cache, allow_pickle=True).tolist()
    else:
        jobs = [(args.seed * 1000 + i, 200) for i in range(-(-args.espeak // 200))]
        utterances = map_isolated(espeak_batch, jobs, args.workers)
        voiced = []
        if shutil.which("festival") and args.festival:
            jobs = [(args.seed * 1000 + 500 + i, 20) for i in range(-(-args.festival // 20))]
            voiced = map_isolated(festival_batch, jobs, args.workers)
        elif args.festival:
            print("festival is not installed: training on espeak-ng speech only")
        if cache:
            cache.parent.mkdir(parents=True, exist_ok=True)
            keep = np.empty(2, dtype=object)
            keep[0], keep[1] = utterances, voiced
            np.save(cache, keep, allow_pickle=True)
    espeak_seconds = sum(len(u[0]) for u in utterances) / SAMPLE_RATE
    festival_seconds = sum(len(u[0]) for u in voiced) / SAMPLE_RATE
    # A fork of a process whose BLAS threads started can hang: fresh workers only.
    with multiprocessing.get_context("spawn").Pool(args.workers) as pool:
        # Festival's voices come from real speakers: heard twice as often.
        raw = utterances + voiced + voiced
        random.Random(args.seed).shuffle(raw)
        examples, i = [], 0
        while i < len(raw):
            k = int(rng.integers(1, 4))
            examples.append(join(rng, raw[i : i + k]))
            i += k
        print(f"speech: espeak-ng {espeak_seconds / 3600:.2f} h, Festival "
              f"{festival_seconds / 3600:.2f} h; {len(examples)} examples "
              f"({time.time() - t0:.0f} s)")  # fmt: skip
        clean = np.concatenate([log_mel(windows(y * 0.1)) for y, _ in examples[:300]])
        prior = clean[clean[:, -1] > np.percentile(clean[:, -1], 40), :-1].mean(axis=0)
        val, train = examples[:150], examples[150:]
        pool_ref = train[:200]
        chunks = [train[i :: args.workers * 4] for i in range(args.workers * 4)]
        jobs = [(args.seed + i, c, prior, args.copies, pool_ref) for i, c in enumerate(chunks)]
        train_set = [x for part in pool.map(features, jobs) for x in part]
        val_set = features((args.seed + 99, val, prior, 2, pool_ref))
    print(f"features: {sum(len(f) for f, _ in train_set)} hops ({time.time() - t0:.0f} s)")
    n_classes = len(VISEMES)
    net = build_net(torch, train_set[0][0].shape[1], n_classes)
    silence = Normalizer(prior)(log_mel(np.zeros((1, WIN), np.float32)))[0]
    counts = np.bincount(np.concatenate([y for _, y in train_set]), minlength=n_classes)
    weights = torch.tensor((counts.sum() / (counts + 1) / n_classes) ** 0.5, dtype=torch.float32)
    loss_fn = torch.nn.CrossEntropyLoss(weight=weights, label_smoothing=0.05)
    optimiser = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, 3e-3, total_steps=args.steps)

    def batch(data: list, picks, length: int = 400):  # noqa: ANN001, ANN202
        xs, ys = [], []
        for i in picks:
            x, y = data[i]
            if len(x) > length:
                s = int(rng.integers(0, len(x) - length))
                x, y = x[s : s + length], y[s : s + length]
            # Silence before (as the product primes the network) and FUTURE hops after.
            x = np.concatenate([np.repeat(silence[None], net.span, 0), x,
                                np.repeat(silence[None], FUTURE, 0)])  # fmt: skip
            xx = np.repeat(silence[None], length + net.span + FUTURE, 0)
            xx[: len(x)] = x
            yy = np.full(length + FUTURE, -100)
            yy[FUTURE : FUTURE + len(y)] = y  # output i describes hop i - FUTURE
            xs.append(xx)
            ys.append(yy)
        return torch.tensor(np.stack(xs)).transpose(1, 2), torch.tensor(np.stack(ys))

    def validate() -> tuple[float, np.ndarray]:
        hits, confusion = [], np.zeros((n_classes, n_classes), np.int64)
        with torch.no_grad():
            for i in range(0, len(val_set), 16):
                x, y = batch(val_set, range(i, min(i + 16, len(val_set))), 3000)
                p = net(x).argmax(1)
                m = y >= 0
                hits.append((p == y)[m].float().mean().item())
                np.add.at(confusion, (y[m].numpy(), p[m].numpy()), 1)
        return float(np.mean(hits)), confusion

    for step in range(args.steps):
        x, y = batch(train_set, rng.integers(0, len(train_set), 32))
        loss = loss_fn(net(x).transpose(1, 2).reshape(-1, n_classes), y.reshape(-1))
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 1000 == 0 or step == args.steps - 1:
            accuracy, _ = validate()
            print(f"step {step}: loss {loss.item():.3f}, validation accuracy {accuracy:.3f} "
                  f"({time.time() - t0:.0f} s)", flush=True)  # fmt: skip
    accuracy, confusion = validate()
    recall = confusion.diagonal() / np.maximum(confusion.sum(axis=1), 1)
    print("recall per viseme: " + ", ".join(
        f"{v.name} {r:.2f}" for v, r in zip(VISEMES, recall, strict=True)))  # fmt: skip
    arrays: dict[str, np.ndarray] = {"prior": prior.astype(np.float32), "future": np.array(FUTURE)}
    for k, (conv, (_, _, _, d)) in enumerate(zip(net.convs, net.spec, strict=True)):
        arrays[f"w{k}"] = conv.weight.detach().numpy().astype(np.float32)
        arrays[f"b{k}"] = conv.bias.detach().numpy().astype(np.float32)
        arrays[f"d{k}"] = np.array(d)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    tmp.replace(args.out)
    print(f"saved {args.out} (validation accuracy {accuracy:.3f})")


if __name__ == "__main__":
    main()
