"""altlens curation package."""
