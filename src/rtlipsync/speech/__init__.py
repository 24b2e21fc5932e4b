"""Brains and speech providers: TTS now; VAD, ASR, LLM and realtime plug in beside it."""
