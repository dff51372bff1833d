"""Plain data for the UI and the query commands: stats, search, gallery pages, the filter index."""
