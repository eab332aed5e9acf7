"""collections: named image sets, their per-model index (top-k examples, statistics), and
what is read from it (dataset examples, per-channel statistics, z-scores)."""
