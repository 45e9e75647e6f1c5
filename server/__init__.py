"""ipsbench-serve: a KServe v2 gRPC inference server with dynamic batching and Triton-compatible metrics."""
