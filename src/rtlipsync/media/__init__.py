"""Media types and I/O: PCM, video frames, the 25 fps timeline, mp4 files."""
