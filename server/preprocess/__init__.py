"""Image preprocessing: encoded JPEG/PNG or decoded UINT8 images → a model's normalized NCHW tensor.

* :mod:`~ipsbench.server.preprocess.recipe`: the recipe (resize, crop, mean, std, filter) and the config parameters
  that state it, for every role;
* :mod:`~ipsbench.server.preprocess.image`: the one implementation of the recipe on one image;
* :mod:`~ipsbench.server.preprocess.decode`: bytes → RGB image within size limits (simplejpeg, else Pillow);
* :mod:`~ipsbench.server.preprocess.transform`: the resize/crop geometry and the normalization;
* :mod:`~ipsbench.server.preprocess.stage`: the server's per-request stage of a front model, run off the event loop;
* :mod:`~ipsbench.server.preprocess.placement`: whether a loaded front preprocesses on the CPU or a GPU;
* :mod:`~ipsbench.server.preprocess.gpu`: the recipe with torch on a device (nvJPEG, device resize and normalize).
"""
