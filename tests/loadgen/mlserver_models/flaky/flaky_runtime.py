"""MLServer runtime of the ``flaky`` test model: the ``tiny`` model's contract, but every second request it
receives raises inside ``predict`` (a model bug, as MLServer sees one), so a load run gets a known mix of
successes and server-side errors.

Runs inside MLServer's own environment (scripts/mlserver.sh), never imported by the test process.
"""

from __future__ import annotations

import itertools

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

FAILURE_MESSAGE = "flaky model: deliberate failure"


class FlakyModel(MLModel):
    async def load(self) -> bool:
        self._requests = itertools.count(1)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # With parallel_workers 0, predict runs on MLServer's one event loop, so the counter needs no lock.
        if next(self._requests) % 2 == 0:
            raise RuntimeError(FAILURE_MESSAGE)
        images = NumpyCodec.decode_input(payload.inputs[0])
        scores = images.reshape(images.shape[0], 3, -1).mean(axis=2).astype(np.float32)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("scores", scores)])
