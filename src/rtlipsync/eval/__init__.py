"""Measures of how well the face matches the speech."""
