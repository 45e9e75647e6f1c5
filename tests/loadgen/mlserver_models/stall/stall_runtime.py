"""MLServer runtime of the ``stall`` test model: the ``tiny`` model's contract, but every fifth request it receives
waits ``STALL_S`` before it answers (asleep, taking no CPU and holding up no other request), so a load run meets a
server whose service time is short except for a known fraction of requests that stall.

Runs inside MLServer's own environment (scripts/mlserver.sh), never imported by the test process.
"""

from __future__ import annotations

import asyncio
import itertools

import numpy as np
from mlserver import MLModel
from mlserver.codecs import NumpyCodec
from mlserver.types import InferenceRequest, InferenceResponse

STALL_S = 2.0
"""How long each fifth request waits (tests/loadgen/test_load_mlserver.py states the same)."""
STALL_EVERY = 5


class StallModel(MLModel):
    async def load(self) -> bool:
        self._requests = itertools.count(1)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        # With parallel_workers 0, predict runs on MLServer's one event loop, so the counter needs no lock; the
        # sleep yields that loop to the other requests meanwhile.
        if next(self._requests) % STALL_EVERY == 0:
            await asyncio.sleep(STALL_S)
        images = NumpyCodec.decode_input(payload.inputs[0])
        scores = images.reshape(images.shape[0], 3, -1).mean(axis=2).astype(np.float32)
        return InferenceResponse(model_name=self.name, outputs=[NumpyCodec.encode_output("scores", scores)])
