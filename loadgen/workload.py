"""Before a run: ask the target about the model and serialize the requests every user will send."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from loadgen.client import TargetError, describe_model, open_channel
from loadgen.images import JPEG_QUALITY
from loadgen.payloads import (
    RESIZE_RATIO,
    InputSpec,
    PayloadError,
    Payloads,
    build_fp32_payloads,
    input_spec_from_metadata,
)
from loadgen.settings import TargetSettings, WorkloadSettings

logger = logging.getLogger(__name__)


class SetupError(RuntimeError):
    """The run cannot start: target unreachable, model unsuitable, settings that do not fit the model."""


@dataclass(frozen=True)
class PreparedWorkload:
    """The serialized requests, and what the report says about the target, the model and the payload."""

    spec: InputSpec
    payloads: Payloads
    target: dict
    model: dict

    def payload_description(self, workload: WorkloadSettings) -> dict:
        crop_h, crop_w = self.spec.crop_hw
        return {
            "encoding": workload.payload,
            "seed": workload.seed,
            **self.payloads.to_dict(),
            "source": (
                f"synthetic ImageNet-style JPEGs, quality {JPEG_QUALITY}; shorter side resized to "
                f"{round(crop_h * RESIZE_RATIO)}, centre-cropped to {crop_h}x{crop_w}, ImageNet mean/std, FP32"
            ),
        }


def prepare_workload(target: TargetSettings, workload: WorkloadSettings) -> PreparedWorkload:
    """Describe the model through the target's metadata RPCs and build the requests; SetupError when unfit."""
    with open_channel(target.target) as probe:
        try:
            info = describe_model(probe, target.model, target.model_version)
            spec = input_spec_from_metadata(info.metadata)
        except (TargetError, PayloadError) as error:
            raise SetupError(f"{target.target} model {target.model!r}: {error}") from error
    if info.max_batch_size and workload.images_per_request > info.max_batch_size:
        raise SetupError(
            f"{workload.images_per_request} images per request exceed model {target.model!r}'s "
            f"max_batch_size {info.max_batch_size}"
        )
    logger.info("model %s input %s %s %s", target.model, spec.name, spec.datatype, list(spec.shape))
    try:
        payloads = build_fp32_payloads(
            target.model, target.model_version, spec,
            workload.images_per_request, workload.distinct_requests, workload.seed,
        )
    except PayloadError as error:
        raise SetupError(str(error)) from error
    return PreparedWorkload(
        spec=spec,
        payloads=payloads,
        target={"address": target.target, "server": info.server},
        model={
            "name": target.model, "version": target.model_version, "platform": info.metadata.platform,
            "input": spec.to_dict(), "max_batch_size": info.max_batch_size,
        },
    )
