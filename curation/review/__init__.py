"""Curator review: labels with history, the learned reward and caption chooser, the review queue."""
