"""Before a run: ask the target about the model and serialize the requests every user will send."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass

from ipsbench.loadgen.client import ModelInfo, TargetError, channel_credentials, describe_model, open_channel
from ipsbench.loadgen.shared_memory import (
    RunRegions,
    SharedMemoryError,
    open_regions,
    output_bytes,
    without_outputs,
)
from ipsbench.loadgen.image_sources import FolderImages, ImageSourceError, folder_source, synthetic_source
from ipsbench.loadgen.images import JPEG_QUALITY
from ipsbench.loadgen.payloads import (
    MAX_IMAGE_POOL,
    InputSpec,
    PayloadError,
    Payloads,
    build_payloads,
    check_mode,
    input_spec_from_metadata,
    model_recipe,
    with_top_classes,
)
from ipsbench.server.backends.device_profile import BACKEND_NAME, DEVICE_PARAMETER, simulated_label
from ipsbench.server.preprocess.recipe import Recipe
from ipsbench.loadgen.settings import TargetSettings, WorkloadSettings

logger = logging.getLogger(__name__)

NAMED_SKIPPED_IMAGES = 3
"""Skipped images named in the warning and the report; the rest are counted."""
MAX_DEVICE_NAME_CHARS = 200


class SetupError(RuntimeError):
    """The run cannot start: target unreachable, model unsuitable, settings that do not fit the model."""


@dataclass(frozen=True)
class PreparedWorkload:
    """The serialized requests, and what the report says about the target, the model and the payload."""

    spec: InputSpec
    payloads: Payloads
    target: dict
    model: dict
    recipe: Recipe | None = None
    """How the client preprocessed the images (fp32, uint8); None when the server does (jpeg)."""
    classes: int = 0
    """Classes of a labelled image folder (0: unlabelled or synthetic)."""
    check_every: int = 0
    """Accuracy under load: every this many requests is a checked one (0: none)."""
    skipped: tuple[tuple[str, str], ...] = ()
    """Files of the image folder skipped as unusable: (name, why)."""
    images_read: int = 0
    """Files of the image folder read, the skipped ones included."""
    simulated: dict | None = None
    """What a target serving a device-time model says of it (:func:`simulated_target`); None for a real engine."""
    regions: RunRegions | None = None
    """With ``--shared-memory system``: the regions the requests name; :meth:`release` removes them."""

    def release(self) -> None:
        """Unregister and remove this workload's shared-memory regions, if it has any (at most once)."""
        if self.regions is not None:
            self.regions.close()

    def payload_description(self, workload: WorkloadSettings) -> dict:
        folder = bool(workload.images_dir)
        images = (f"images from {workload.images_dir}" + (f" ({self.classes} classes)" if self.classes else "")
                  if folder else f"synthetic ImageNet-style JPEGs, quality {JPEG_QUALITY}, seed {workload.seed}")
        if self.recipe is None:
            how = "sent encoded; the server decodes and preprocesses"
        else:
            how = self.recipe.describe() + (", FP32" if workload.payload == "fp32" else ", sent as RGB uint8")
        return {
            "mode": workload.payload,
            "encoding": workload.payload,
            "seed": workload.seed,
            **self.payloads.to_dict(),
            "source": "folder" if folder else "synthetic",
            "images_dir": workload.images_dir or None,
            "labelled": self.classes > 0,
            "accuracy_every": workload.accuracy_every or None,
            "description": f"{images}; {how}",
            "images_read": self.images_read if folder else None,
            "skipped_images": len(self.skipped),
            "skipped_image_examples": [f"{name}: {why}" for name, why in self.skipped[:NAMED_SKIPPED_IMAGES]],
            "transfer": "grpc" if workload.shared_memory == "none" else f"{workload.shared_memory}_shared_memory",
            "shared_memory": None if self.regions is None else self.regions.describe(),
        }


def prepare_workload(
    target: TargetSettings, workload: WorkloadSettings, sends: bool = True
) -> PreparedWorkload:
    """Describe the model through the target's metadata RPCs and build the requests; SetupError when unfit.
    ``sends`` False: for a master whose workers send (each prepares its own), so no shared-memory regions here."""
    try:
        credentials = channel_credentials(target.tls_ca, target.tls_cert, target.tls_key)
    except TargetError as error:
        raise SetupError(str(error)) from error
    with open_channel(target.target, 0, credentials) as probe:
        try:
            info = describe_model(probe, target.model, target.model_version, metadata=tuple(target.headers))
            spec = input_spec_from_metadata(info.metadata)
        except (TargetError, PayloadError) as error:
            raise SetupError(f"{target.target} model {target.model!r}: {error}") from error
    if info.max_batch_size and workload.images_per_request > info.max_batch_size:
        raise SetupError(
            f"{workload.images_per_request} images per request exceed model {target.model!r}'s "
            f"max_batch_size {info.max_batch_size}"
        )
    logger.info("model %s input %s %s %s", target.model, spec.name, spec.datatype, list(spec.shape))
    count = min(workload.distinct_requests * workload.images_per_request, MAX_IMAGE_POOL)
    try:
        check_mode(workload.payload, spec)
        recipe = None if workload.payload == "jpeg" else model_recipe(spec, info.config)
        source = image_pool(workload, count)
        payloads = build_payloads(
            target.model, target.model_version, spec, workload.payload,
            workload.images_per_request, workload.distinct_requests, source.images, recipe,
        )
    except (PayloadError, ImageSourceError) as error:
        raise SetupError(f"model {target.model!r}: {error}") from error
    if workload.accuracy_every:
        if not source.classes:
            raise SetupError(f"accuracy under load needs labelled images (synset folders) in {workload.images_dir}")
        if not info.metadata.outputs:
            raise SetupError(f"model {target.model!r} declares no output to classify")
    regions = None
    if workload.shared_memory == "system" and sends:
        regions = shared_memory_regions(target, credentials, info.metadata, spec, workload, payloads)
        payloads = dataclasses.replace(payloads, requests=regions.requests)
    if workload.accuracy_every:
        # A checked request asks for its top classes in the message (Triton refuses classification into a region);
        # its input stays where the other requests' is.
        output = info.metadata.outputs[0].name
        payloads = dataclasses.replace(payloads, checked_requests=tuple(
            with_top_classes(without_outputs(request), output) for request in payloads.requests
        ))
    return PreparedWorkload(
        spec=spec,
        payloads=payloads,
        target={"address": target.target, "server": info.server},
        model={
            "name": target.model, "version": target.model_version, "platform": info.metadata.platform,
            "input": spec.to_dict(), "max_batch_size": info.max_batch_size,
            "backend": info.config.backend if info.config is not None else None,
        },
        recipe=recipe,
        classes=source.classes,
        check_every=workload.accuracy_every,
        skipped=source.skipped,
        images_read=source.read,
        simulated=simulated_target(info),
        regions=regions,
    )


def simulated_target(info: ModelInfo) -> dict | None:
    """``backend``, ``device`` and ``label`` when the target serves the model with the device-time model backend
    (its ModelConfig's backend, or ModelMetadata's platform, says so), the device being the one whose profile it
    replays as the config names it (target text: kept only when short and printable); None for a real engine."""
    config = info.config
    named = config is not None and BACKEND_NAME in (config.backend, config.platform)
    if not named and info.metadata.platform != BACKEND_NAME:
        return None
    device = config.parameters[DEVICE_PARAMETER].string_value.strip() if (
        config is not None and DEVICE_PARAMETER in config.parameters) else ""
    if len(device) > MAX_DEVICE_NAME_CHARS or not device.isprintable():
        device = ""
    logger.warning("model %r is a device-time model: %s; no device computes its batches",
                   info.metadata.name, simulated_label(device))
    return {"backend": BACKEND_NAME, "device": device or None, "label": simulated_label(device)}


def shared_memory_regions(target: TargetSettings, credentials, metadata, spec: InputSpec,
                          workload: WorkloadSettings, payloads: Payloads) -> RunRegions:
    """This run's regions on the target, filled with ``payloads``' inputs; SetupError when they cannot be."""
    try:
        sizes = output_bytes(metadata, workload.images_per_request, spec.batched)
        channel = open_channel(target.target, 0, credentials)
        return open_regions(channel, payloads.requests, [(t.name, n) for t, n in zip(metadata.outputs, sizes)],
                            tuple(target.headers) or None)
    except SharedMemoryError as error:
        raise SetupError(f"{target.target} model {target.model!r}: {error}") from error


def image_pool(workload: WorkloadSettings, count: int) -> FolderImages:
    """Up to ``count`` source images: the ``--images`` folder's usable ones, else the synthetic set."""
    if workload.images_dir:
        return usable_folder_images(workload, count)
    return FolderImages(synthetic_source(workload.seed, count, workload.cache_dir or None), classes=0)


def usable_folder_images(workload: WorkloadSettings, count: int) -> FolderImages:
    """The ``--images`` folder's usable images. Unusable files are skipped with a warning naming the first few;
    with ``--strict-images`` the first one refuses the run, as does a folder with none usable (ImageSourceError)."""
    folder = folder_source(workload.images_dir, count)
    if not folder.skipped:
        return folder
    (first, why), *_ = folder.skipped
    if workload.strict_images:
        raise ImageSourceError(
            f"--strict-images: {workload.images_dir}/{first} is not a usable image ({why}); "
            f"{len(folder.skipped)} of {folder.read} images read are unusable"
        )
    named = "; ".join(f"{name} ({reason})" for name, reason in folder.skipped[:NAMED_SKIPPED_IMAGES])
    more = len(folder.skipped) - NAMED_SKIPPED_IMAGES
    named += f" (and {more} more)" if more > 0 else ""
    if not folder.images:
        raise ImageSourceError(
            f"none of the {folder.read} images read from {workload.images_dir} is usable: {named}"
        )
    logger.warning("skipped %d of %d images of %s as unusable (they do not decode, or exceed the decode limits): "
                   "%s", len(folder.skipped), folder.read, workload.images_dir, named)
    return folder
