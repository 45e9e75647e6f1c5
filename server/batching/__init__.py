"""Dynamic batching: a queue of futures per model (batcher) and the tensor merge/split (batch)."""
