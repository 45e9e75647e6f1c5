"""The preprocessing recipe (how an image becomes a model's input tensor) and how a model's config states it.

One owner for every role: ipsbench-export writes the recipe into each config it exports, ipsbench-serve's fronts
apply it, ipsbench-load builds its fp32 and uint8 payloads with it (read from the target's ModelConfig), and
export's verification preprocesses its images with it; the pixels all come from :mod:`ipsbench.server.preprocess.image`.

Config ``parameters`` (string values) under the prefix ``ipsbench.preprocess``:

* the recipe, on any image model: ``.resize`` (the shorter side after resizing), ``.crop`` (the square centre
  crop), ``.mean`` / ``.std`` (three comma-separated values applied to pixels scaled to [0, 1], one per channel of
  the engine's input, in its order), ``.interpolation`` (``bilinear`` or ``bicubic``), ``.channel_order`` (the
  engine's channel order: ``rgb``, the default, or ``bgr``, as Caffe-trained models take; with ``bgr`` the
  mean and std are listed B, G, R, as Caffe states them);
* a *front*, a model that takes images and runs its engine on the recipe's tensor: ``ipsbench.preprocess`` itself
  (``jpeg``: BYTES input of encoded JPEG/PNG images; ``uint8``: decoded, resized and cropped HWC RGB pixels),
  ``.engine_input`` (the engine's input name), ``.engine_datatype`` (``FP32`` or ``FP16``), ``.max_pixels`` and
  ``.max_image_bytes`` (limits checked before decoding), ``.device`` (where the server preprocesses: ``auto``,
  ``cpu`` or ``gpu``; see :mod:`ipsbench.server.preprocess.placement`).

A served front's ModelConfig also carries ``.device_effective`` (``cpu`` or ``gpu``: where the server does
preprocess it), written by the server; it is accepted, and ignored, when read back.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

PARAMETER_PREFIX = "ipsbench.preprocess"
FRONT_KINDS = ("jpeg", "uint8")
FRONT_INPUT = "image"
"""The client-facing input of a front."""
INTERPOLATIONS = ("bilinear", "bicubic")
CHANNEL_ORDERS = ("rgb", "bgr")
"""The engine input's channel order; images are decoded to RGB and reordered while being normalized."""
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224
"""ResNet's evaluation recipe: the shorter side resized to crop × 256/224, then centre-cropped."""
DEFAULT_MAX_PIXELS = 40_000_000
DEFAULT_MAX_IMAGE_BYTES = 10 * 1024 * 1024
ENGINE_DATATYPES = ("FP32", "FP16")
RECIPE_KEYS = ("resize", "crop", "mean", "std", "interpolation", "channel_order")
FRONT_KEYS = ("engine_input", "engine_datatype", "max_pixels", "max_image_bytes", "device")
REPORTED_KEYS = ("device_effective",)
"""Keys the server writes into the ModelConfig it returns; read back (by ipsbench-load), they are ignored."""
PREPROCESS_DEVICES = ("auto", "cpu", "gpu")
"""Values of ``ipsbench.preprocess.device``: ``auto`` (the GPU when CUDA is present and the model's engine runs on a
CUDA device, else the CPU), ``cpu``, ``gpu``."""
DEVICE_PARAMETER = f"{PARAMETER_PREFIX}.device"
DEVICE_EFFECTIVE_PARAMETER = f"{PARAMETER_PREFIX}.device_effective"


class RecipeError(ValueError):
    """The ``ipsbench.preprocess*`` parameters do not describe a valid recipe or front."""


@dataclass(frozen=True)
class Recipe:
    """Resize the shorter side to ``resize``, cut the centre ``crop`` square, scale to [0, 1], put the channels in
    ``channel_order``, normalize (``mean`` and ``std`` are per channel in that order)."""

    crop: int
    resize: int
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: str = "bilinear"
    channel_order: str = "rgb"

    def __post_init__(self) -> None:
        if not 0 < self.crop <= self.resize:
            raise RecipeError(f"a recipe needs 0 < crop <= resize, got crop {self.crop}, resize {self.resize}")
        if len(self.mean) != 3 or len(self.std) != 3 or not all(math.isfinite(v) for v in (*self.mean, *self.std)):
            raise RecipeError("mean and std need three finite values each (one per channel)")
        if any(not v > 0 for v in self.std):
            raise RecipeError(f"std values must be > 0, got {list(self.std)}")
        if self.interpolation not in INTERPOLATIONS:
            raise RecipeError(f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {self.interpolation!r}")
        if self.channel_order not in CHANNEL_ORDERS:
            raise RecipeError(f"channel_order must be one of {', '.join(CHANNEL_ORDERS)}, got {self.channel_order!r}")

    @classmethod
    def imagenet(cls, crop: int) -> Recipe:
        """ResNet's evaluation recipe at ``crop``: the one a model that states none is assumed to use."""
        return cls(crop=crop, resize=round(crop * RESIZE_RATIO))

    def parameters(self) -> dict[str, str]:
        """The recipe as config ``parameters``; the channel order only when it is not the default ``rgb`` (a
        config without it reads as ``rgb``, so configs written before the key existed still mean what they did)."""
        parameters = {
            f"{PARAMETER_PREFIX}.resize": str(self.resize),
            f"{PARAMETER_PREFIX}.crop": str(self.crop),
            f"{PARAMETER_PREFIX}.mean": _numbers(self.mean),
            f"{PARAMETER_PREFIX}.std": _numbers(self.std),
            f"{PARAMETER_PREFIX}.interpolation": self.interpolation,
        }
        if self.channel_order != "rgb":
            parameters[f"{PARAMETER_PREFIX}.channel_order"] = self.channel_order
        return parameters

    def describe(self) -> str:
        order = f", channels {self.channel_order.upper()}" if self.channel_order != "rgb" else ""
        return (f"shorter side resized to {self.resize} ({self.interpolation}), centre-cropped to "
                f"{self.crop}x{self.crop}{order}, mean {_numbers(self.mean)}, std {_numbers(self.std)}")


@dataclass(frozen=True)
class Front:
    """A front's parameters: the kind of image it takes, the engine input it feeds, the limits it checks."""

    kind: str
    recipe: Recipe
    engine_input: str
    engine_datatype: str = "FP32"
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_image_bytes: int = DEFAULT_MAX_IMAGE_BYTES
    device: str = "auto"
    """Where the server preprocesses: one of :data:`PREPROCESS_DEVICES`."""

    def parameters(self) -> dict[str, str]:
        """The front as config ``parameters`` (its recipe's included)."""
        return {
            PARAMETER_PREFIX: self.kind,
            f"{PARAMETER_PREFIX}.engine_input": self.engine_input,
            f"{PARAMETER_PREFIX}.engine_datatype": self.engine_datatype,
            DEVICE_PARAMETER: self.device,
            **self.recipe.parameters(),
        }


def is_preprocess_parameter(key: str) -> bool:
    """Whether a config parameter belongs to the preprocessing recipe or front (not to the engine)."""
    return key == PARAMETER_PREFIX or key.startswith(PARAMETER_PREFIX + ".")


def front_name(model: str, kind: str) -> str:
    """The repository name of ``model``'s front of ``kind``: ``resnet50`` + ``jpeg`` → ``resnet50_jpeg``."""
    return f"{model}_{kind}"


def read_parameters(parameters: Mapping[str, str]) -> tuple[Recipe | None, Front | None]:
    """The recipe a config states (None: it states none) and, for a front, the front; :class:`RecipeError` naming
    the parameter for anything malformed. ``parameters``: the config's parameters as strings."""
    reported = {f"{PARAMETER_PREFIX}.{key}" for key in REPORTED_KEYS}
    values = {
        key: value.strip() for key, value in parameters.items() if is_preprocess_parameter(key) and key not in reported
    }
    if not values:
        return None, None
    kind = values.pop(PARAMETER_PREFIX, None)
    keys = {key.removeprefix(PARAMETER_PREFIX + "."): key for key in values}
    unknown = sorted(key for short, key in keys.items() if short not in (*RECIPE_KEYS, *FRONT_KEYS))
    if unknown:
        raise RecipeError(f"unknown preprocessing parameter(s) {unknown}; known: {sorted((*RECIPE_KEYS, *FRONT_KEYS))}")
    values = {short: values[key] for short, key in keys.items()}
    front_keys = sorted(f"{PARAMETER_PREFIX}.{key}" for key in values if key in FRONT_KEYS)
    if kind is None and front_keys:
        raise RecipeError(f"parameters {front_keys} need '{PARAMETER_PREFIX}' (one of {', '.join(FRONT_KINDS)})")
    if kind is not None:
        kind = kind.lower()
        if kind not in FRONT_KINDS:
            raise RecipeError(f"parameter '{PARAMETER_PREFIX}' must be one of {', '.join(FRONT_KINDS)}, got '{kind}'")
    crop = _positive_int(values, "crop", required=True)
    resize = _positive_int(values, "resize", required=kind == "jpeg") or crop
    if resize < crop:
        raise RecipeError(f"parameter '{PARAMETER_PREFIX}.resize' ({resize}) must be >= '{PARAMETER_PREFIX}.crop' "
                          f"({crop})")
    std = _triple(values, "std", IMAGENET_STD)
    if any(not v > 0 for v in std):
        raise RecipeError(f"parameter '{PARAMETER_PREFIX}.std' values must be > 0, got {list(std)}")
    interpolation = values.get("interpolation", "") or "bilinear"
    if interpolation not in INTERPOLATIONS:
        raise RecipeError(f"parameter '{PARAMETER_PREFIX}.interpolation' must be one of {', '.join(INTERPOLATIONS)}, "
                          f"got '{interpolation}'")
    channel_order = values.get("channel_order", "").lower() or "rgb"
    if channel_order not in CHANNEL_ORDERS:
        raise RecipeError(f"parameter '{PARAMETER_PREFIX}.channel_order' must be one of {', '.join(CHANNEL_ORDERS)}, "
                          f"got '{values['channel_order'][:64]}'")
    recipe = Recipe(crop, resize, _triple(values, "mean", IMAGENET_MEAN), std, interpolation, channel_order)
    if kind is None:
        return recipe, None
    engine_input = values.get("engine_input", "")
    if not engine_input:
        raise RecipeError(f"parameter '{PARAMETER_PREFIX}.engine_input' (the engine's input name) is required")
    engine_datatype = values.get("engine_datatype", "FP32").upper()
    if engine_datatype not in ENGINE_DATATYPES:
        raise RecipeError(f"parameter '{PARAMETER_PREFIX}.engine_datatype' must be FP32 or FP16, got "
                          f"'{values['engine_datatype']}'")
    device = values.get("device", "").lower() or "auto"
    if device not in PREPROCESS_DEVICES:
        raise RecipeError(f"parameter '{DEVICE_PARAMETER}' must be one of {', '.join(PREPROCESS_DEVICES)}, got "
                          f"'{values['device'][:64]}'")
    return recipe, Front(
        kind, recipe, engine_input, engine_datatype,
        max_pixels=_positive_int(values, "max_pixels") or DEFAULT_MAX_PIXELS,
        max_image_bytes=_positive_int(values, "max_image_bytes") or DEFAULT_MAX_IMAGE_BYTES,
        device=device,
    )


def _numbers(values) -> str:
    return ",".join(format(float(v), ".10g") for v in values)


def _positive_int(values: dict[str, str], key: str, required: bool = False) -> int:
    """The parameter as an int > 0; 0 when absent and not required."""
    text = values.get(key, "")
    if not text:
        if required:
            raise RecipeError(f"parameter '{PARAMETER_PREFIX}.{key}' is required")
        return 0
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise RecipeError(f"parameter '{PARAMETER_PREFIX}.{key}' must be an integer, got '{text[:64]}'") from None
    if value <= 0:
        raise RecipeError(f"parameter '{PARAMETER_PREFIX}.{key}' must be > 0, got {value}")
    return value


def _triple(values: dict[str, str], key: str, default: tuple[float, float, float]) -> tuple[float, float, float]:
    text = values.get(key, "")
    if not text:
        return default
    try:
        numbers = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise RecipeError(
            f"parameter '{PARAMETER_PREFIX}.{key}' must be three comma-separated numbers, got '{text[:64]}'"
        ) from None
    if len(numbers) != 3 or not all(math.isfinite(v) for v in numbers):
        raise RecipeError(
            f"parameter '{PARAMETER_PREFIX}.{key}' must be three comma-separated finite numbers, got '{text[:64]}'"
        )
    return numbers  # type: ignore[return-value]
