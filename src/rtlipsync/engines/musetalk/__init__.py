"""MuseTalk: photoreal lip-sync from the official weights (the ``musetalk`` extra).

`weights` fetches and checks the official files (no torch needed); `model` loads them.
"""
