"""altlens app package."""
