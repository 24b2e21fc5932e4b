"""Faces: landmarks, crop boxes, blend masks, and avatars prepared from them."""
