"""Articulation: which mouth shape each 40 ms of speech shows, for every engine that draws
mouths (the CPU engine, a bank of real or baked mouths).

speech chunk (PCM + phoneme timings or text) → `Articulator` → `MouthParams` per frame:

- `phonemes`: visemes and their target shapes, from IPA (any language espeak-ng speaks);
- `acoustic`: the project's own small network that hears visemes in audio with no text;
- `align`: known text aligned to the audio as both stream in;
- `track`: coarticulation, closures, anticipation and silence, in one streaming layer.
"""

from rtlipsync.articulation.track import CUES, Articulator, MouthParams

__all__ = ["CUES", "Articulator", "MouthParams"]
