"""From a decision to shards: saved selections, the caption policy, export formats, verification."""
