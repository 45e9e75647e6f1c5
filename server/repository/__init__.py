"""The model repository in Triton's layout: its names (:mod:`~ipsbench.server.repository.layout`), the checksums of
model files that are code (:mod:`~ipsbench.server.repository.checksum`), and reading it
(:mod:`~ipsbench.server.repository.scan`). ipsbench-export writes through the first two; only the server reads."""
