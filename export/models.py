"""The torchvision classification zoo: build a network by name with its input size and preprocessing recipe."""
from __future__ import annotations

import inspect
from dataclasses import dataclass

from ipsbench.export.errors import ExportError
from ipsbench.server.preprocess.recipe import IMAGENET_MEAN, IMAGENET_STD, Recipe

SIZED_BY_ARGUMENT = ("vit_",)
"""Name prefixes of architectures whose input size is fixed when built (position embeddings): built at the size of
their default weights, so a local weights file of that recipe loads (``vit_h_14``: 518, not the builder's 224)."""
EXPLICIT_INIT = ("googlenet", "inception_v3")
"""Builders that warn unless ``init_weights`` is given; passed as ``True``, their long-standing default."""


@dataclass(frozen=True)
class NetworkSpec:
    """What a served model needs to know about the torchvision network it was exported from."""

    name: str
    crop_size: int
    """Square input side the network expects (224 for most, 299 for Inception v3)."""
    resize_size: int
    """Shorter side the image is resized to before the center crop."""
    num_classes: int
    labels: tuple[str, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    """Resampling filter of the resize (``bilinear`` or ``bicubic``), as the weights' recipe used it."""

    @property
    def recipe(self) -> Recipe:
        """How an image becomes this network's input (written into every config exported from it)."""
        return Recipe(self.crop_size, self.resize_size, self.mean, self.std, self.interpolation)


def _torchvision():
    try:
        import torch  # noqa: F401
        import torchvision
    except ImportError as exc:  # the export role is the only one that needs PyTorch
        raise ExportError(
            f"ipsbench-export needs PyTorch and torchvision ({exc.name} is not installed): "
            "pip install 'ipsbench[export]'"
        ) from exc
    return torchvision


def available_models() -> list[str]:
    """Every classification model torchvision can build."""
    return sorted(_torchvision().models.list_models(module=_torchvision().models))


def _transform_settings(weights) -> dict:
    """The weights' preprocessing settings, with the transform's own defaults where the weights leave one out."""
    defaults = {
        name: parameter.default
        for name, parameter in inspect.signature(weights.transforms.func).parameters.items()
        if parameter.default is not inspect.Parameter.empty
    }
    return {**defaults, **weights.transforms.keywords}


def describe(name: str, image_size: int | None = None) -> NetworkSpec:
    """Input size, resize size, normalization and labels from torchvision's weight metadata (no download needed)."""
    tv = _torchvision()
    if name not in available_models():
        raise ExportError(f"unknown model '{name}'; `ipsbench-export --list` shows the {len(available_models())} available")
    weights = tv.models.get_model_weights(name).DEFAULT
    settings = _transform_settings(weights)
    crop = int(settings["crop_size"])
    resize = int(settings.get("resize_size", crop))
    if image_size is not None:
        resize = round(image_size * resize / crop)
        crop = image_size
    labels = tuple(weights.meta["categories"])
    interpolation = getattr(settings.get("interpolation"), "value", "bilinear")
    return NetworkSpec(
        name=name,
        crop_size=crop,
        resize_size=resize,
        num_classes=len(labels),
        labels=labels,
        mean=tuple(float(v) for v in settings.get("mean", IMAGENET_MEAN)),
        std=tuple(float(v) for v in settings.get("std", IMAGENET_STD)),
        interpolation=str(interpolation),
    )


def build(
    name: str,
    seed: int = 0,
    weights_path: str | None = None,
    *,
    image_size: int | None = None,
    device: str | None = None,
):
    """The network in eval mode: random weights from a fixed seed, or a local state dict (never downloaded).

    ``image_size`` matters only for architectures in :data:`SIZED_BY_ARGUMENT` (default: the spec's crop size).
    ``device="meta"`` builds the structure without memory or compute, to check shapes.
    """
    tv = _torchvision()
    import torch

    kwargs = {}
    if name.startswith(SIZED_BY_ARGUMENT):
        kwargs["image_size"] = image_size or describe(name).crop_size
    if name in EXPLICIT_INIT:
        kwargs["init_weights"] = True
    torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = tv.models.get_model(name, weights=None, **kwargs)
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()
