"""The torchvision classification zoo: build a model by name with its input size and preprocessing constants."""
from __future__ import annotations

from dataclasses import dataclass

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    """What a served model needs to know about the network it was exported from."""

    name: str
    crop_size: int
    """Square input side the network expects (224 for most, 299 for Inception v3)."""
    resize_size: int
    """Shorter side the image is resized to before the center crop."""
    num_classes: int
    labels: tuple[str, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _torchvision():
    try:
        import torch  # noqa: F401
        import torchvision
    except ImportError as exc:  # the export role is the only one that needs PyTorch
        raise SystemExit(
            f"ipsbench-export needs PyTorch and torchvision ({exc.name} is not installed): "
            "pip install 'ipsbench[export]'"
        ) from exc
    return torchvision


def available_models() -> list[str]:
    """Every classification model torchvision can build."""
    return sorted(_torchvision().models.list_models(module=_torchvision().models))


def describe(name: str, image_size: int | None = None) -> ModelSpec:
    """Input size, resize size and labels from torchvision's weight metadata (no download needed)."""
    tv = _torchvision()
    if name not in available_models():
        raise SystemExit(f"unknown model '{name}'; `ipsbench-export --list` shows the {len(available_models())} available")
    weights = tv.models.get_model_weights(name).DEFAULT
    crop = int(weights.transforms.keywords.get("crop_size", 224))
    resize = int(weights.transforms.keywords.get("resize_size", round(crop * 256 / 224)))
    if image_size is not None:
        resize = round(image_size * resize / crop)
        crop = image_size
    labels = tuple(weights.meta["categories"])
    return ModelSpec(name=name, crop_size=crop, resize_size=resize, num_classes=len(labels), labels=labels)


def build(name: str, seed: int = 0, weights_path: str | None = None):
    """The network in eval mode: random weights from a fixed seed, or a local state dict (never downloaded)."""
    tv = _torchvision()
    import torch

    torch.manual_seed(seed)
    model = tv.models.get_model(name, weights=None)
    if weights_path is not None:
        state = torch.load(weights_path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    return model.eval()
