"""Structure of a workspace: clusters, the 2-D map, summaries, near-duplicates, diversity, caption defaults."""
