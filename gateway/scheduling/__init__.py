"""Per-model-version queueing and dynamic batching."""
