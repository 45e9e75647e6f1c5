"""MLServer runtime of the ``tiny`` test model: FP32 images [N, 3, 64, 64] in, their per-channel means [N, 3] out.

Runs inside MLServer's own environment (scripts/mlserver.sh), never imported by the test process.
"""

from __future__ import annotations

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse


def channel_means(images: np.ndarray) -> np.ndarray:
    """The mean of each channel of each image, as FP32 [N, 3]."""
    return images.reshape(images.shape[0], 3, -1).mean(axis=2).astype(np.float32)


class TinyModel(MLModel):
    async def load(self) -> bool:
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        images = NumpyCodec.decode_input(payload.inputs[0])
        scores = channel_means(images)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("scores", scores)])
