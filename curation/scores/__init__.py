"""Alignment scores: clip_score, cycle, agreement, contrast, and versioned per-sample rewards."""
