"""altlens indexer package."""
