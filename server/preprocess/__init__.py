"""Image preprocessing in the server: encoded JPEG/PNG or decoded UINT8 images → the engine's normalized NCHW tensor.

* :mod:`ipsbench.server.preprocess.decode`: bytes → RGB image within size limits (simplejpeg, else Pillow);
* :mod:`ipsbench.server.preprocess.transform`: resize, centre-crop, normalize, NCHW;
* :mod:`ipsbench.server.preprocess.stage`: the per-request stage run off the event loop, and :class:`Preprocessor`;
* :mod:`ipsbench.server.preprocess.stats`: counters per model version for the metrics endpoint.

The configuration (``ipsbench.preprocess*`` parameters) is parsed in :mod:`ipsbench.server.model` as a ``PreprocessSpec``.
"""

from __future__ import annotations

from ipsbench.server.preprocess.decode import (
    DecodedImage,
    DecodeLimits,
    ImageDecodeError,
    ImageTooLargeError,
    decode_rgb,
    default_decoder,
)
from ipsbench.server.preprocess.stage import Preprocessor, preprocess_inputs

__all__ = [
    "DecodeLimits",
    "DecodedImage",
    "ImageDecodeError",
    "ImageTooLargeError",
    "Preprocessor",
    "decode_rgb",
    "default_decoder",
    "preprocess_inputs",
]
