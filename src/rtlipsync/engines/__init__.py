"""Lip-sync engines behind one protocol (see `rtlipsync.engines.base`)."""
