"""rtlipsync: a real-time talking digital human.

Speech goes in, a face whose lips move with it comes out, one 40 ms frame at a time.
"""

__version__ = "0.1.0"
