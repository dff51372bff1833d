"""Synthetic captions and fusion: captioners (a registry), the caption and fuse stages, the fusion rules."""
