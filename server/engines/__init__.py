"""The engines behind the backends, usable on their own: a TorchScript module (:mod:`~.torch_engine`, with its
options :mod:`~.torch_options` and CUDA graphs :mod:`~.cuda_graphs`) and a TensorRT plan (:mod:`~.tensorrt_engine`).

A backend (:mod:`ipsbench.server.backends`) adapts an engine to the server's model configs and instances;
ipsbench-export runs the same engines to verify what it exported, so a model is checked by the code that serves it.
"""
