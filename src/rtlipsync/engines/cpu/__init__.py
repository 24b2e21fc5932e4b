"""The CPU engine: no downloaded weights, any face, real time on two cores."""

from rtlipsync.engines.cpu.engine import CpuEngine, CpuStream

__all__ = ["CpuEngine", "CpuStream"]
