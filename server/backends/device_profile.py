"""A measured device-time profile (``ipsbench-serve bench --json`` output from a real device), read, checked and
turned into the time one batch takes.

The profile's ``results`` give images/sec per measured batch size; a batch of ``b`` images takes ``b / images_per_s``
seconds there, the mean time of one engine call (the bench's ``elapsed_s / batches``), so a device model replaying
it reaches the profile's throughput, not its median's. Between two measured batch sizes the time is interpolated
linearly in the batch size; beyond the largest it is extrapolated along the last segment (never falling: a negative
slope is taken as flat), or in proportion to the batch when only one size was measured; below the smallest it is the
smallest's time (a device is latency-bound there). A profile is untrusted input: its size, its number of entries,
its batch sizes and the time of one batch are bounded, and anything malformed, empty, non-finite, repeated or
measured against a device model itself is refused with :class:`ProfileError` naming the problem.

The names that tie a repository entry to the ``ipsbench_device_model`` backend live here, so that the exporter and
the load generator read them without importing the backend.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass
from pathlib import Path

BACKEND_NAME = "ipsbench_device_model"
"""The backend's name, and its platform string, in a config and in ModelConfig / ModelMetadata answers."""
PROFILE_PARAMETER = "ipsbench.device_model.profile"
"""Config parameter: the profile's path relative to the model's folder (default: the version's model file)."""
DEVICE_PARAMETER = "ipsbench.device_model.device"
"""Config parameter: the device the profile was measured on, as clients read it; must match the profile's."""
PROFILE_FILENAME = "profile.json"
"""The version's model file of a device-model entry: the profile itself."""
MAX_PROFILE_BYTES = 1024 * 1024
MAX_PROFILE_ENTRIES = 1024
MAX_PROFILE_BATCH_SIZE = 1 << 20
MAX_BATCH_TIME_S = 60.0
"""The longest one simulated batch may take, in the profile and extrapolated to a model's max_batch_size."""
BENCH_KIND = "engine_bench"
BENCH_SCHEMA_VERSIONS = (1, 2)
"""The bench JSON versions a profile may be (2 added power fields and ``mode``; the figures read are unchanged)."""


class ProfileError(ValueError):
    """A profile that cannot be used, with the reason."""


def simulated_label(device_name: str) -> str:
    """``SIMULATED (device-time model from NVIDIA H100 80GB HBM3)``: how every report heads a simulated run."""
    return f"SIMULATED (device-time model from {device_name or 'an unnamed device'})"


@dataclass(frozen=True)
class DeviceProfile:
    """The measured time per batch of one engine on one device."""

    device_name: str
    """The product name the bench recorded (``NVIDIA H100 80GB HBM3``)."""
    precision: str
    model: str
    batch_sizes: tuple[int, ...]
    """Measured batch sizes, ascending."""
    batch_times_s: tuple[float, ...]
    """Mean time of one engine call at each of ``batch_sizes``."""

    @property
    def largest_batch(self) -> int:
        return self.batch_sizes[-1]

    def batch_time_s(self, batch_size: int) -> float:
        """Seconds one call of ``batch_size`` images takes on the profiled device (see the module's docstring)."""
        sizes, times = self.batch_sizes, self.batch_times_s
        if batch_size <= sizes[0]:
            return times[0]
        if batch_size >= sizes[-1]:
            if len(sizes) == 1:
                return times[0] * batch_size / sizes[0]
            slope = max((times[-1] - times[-2]) / (sizes[-1] - sizes[-2]), 0.0)
            return times[-1] + slope * (batch_size - sizes[-1])
        right = bisect.bisect_right(sizes, batch_size)
        low, high = sizes[right - 1], sizes[right]
        share = (batch_size - low) / (high - low)
        return times[right - 1] + share * (times[right] - times[right - 1])


def read_profile(path: Path) -> DeviceProfile:
    """The profile in ``path``, read without trusting it; :class:`ProfileError` when it is unusable."""
    return parse_profile(read_profile_bytes(path), path.name)


def read_profile_bytes(path: Path) -> bytes:
    """The bytes of the profile file ``path``, at most :data:`MAX_PROFILE_BYTES` of them (ProfileError beyond)."""
    try:
        with open(path, "rb") as file:
            data = file.read(MAX_PROFILE_BYTES + 1)
    except OSError as exc:
        raise ProfileError(f"cannot read device profile '{path.name}': {exc.strerror or exc}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise ProfileError(f"device profile '{path.name}' is larger than {MAX_PROFILE_BYTES} bytes")
    return data


def _refuse_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number a profile may hold")


def parse_profile(data: bytes, where: str) -> DeviceProfile:
    """A profile from the bytes of ``ipsbench-serve bench --json`` output; ``where`` names it in errors."""
    if not data.strip():
        raise ProfileError(f"device profile '{where}' is empty")
    try:
        document = json.loads(data.decode("utf-8"), parse_constant=_refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ProfileError(f"device profile '{where}' is not JSON as ipsbench-serve bench --json writes it: "
                           f"{str(exc)[:200]}") from None
    return profile_from_document(document, where)


def profile_from_document(document: object, where: str) -> DeviceProfile:
    """The profile a parsed ``ipsbench-serve bench --json`` document states."""
    if not isinstance(document, dict):
        raise ProfileError(f"device profile '{where}' must be a JSON object, got {type(document).__name__}")
    if document.get("kind") != BENCH_KIND or document.get("schema_version") not in BENCH_SCHEMA_VERSIONS:
        raise ProfileError(f"device profile '{where}' must be ipsbench-serve bench --json output (kind "
                           f"'{BENCH_KIND}', schema_version {' or '.join(map(str, BENCH_SCHEMA_VERSIONS))})")
    if document.get("mode", "infer") != "infer":
        raise ProfileError(f"device profile '{where}' times training steps (mode '{document.get('mode')}'), not the "
                           "served engine: measure it with ipsbench-serve bench --mode infer")
    if document.get("simulated"):
        raise ProfileError(f"device profile '{where}' was measured against a device-time model, not a device")
    results = document.get("results")
    if not isinstance(results, list) or not results:
        raise ProfileError(f"device profile '{where}' has no results (a non-empty list of batch sizes)")
    if len(results) > MAX_PROFILE_ENTRIES:
        raise ProfileError(f"device profile '{where}' has {len(results)} results; at most {MAX_PROFILE_ENTRIES}")
    points = sorted(_point(entry, index, where) for index, entry in enumerate(results))
    sizes = [size for size, _ in points]
    repeated = sorted({size for size in sizes if sizes.count(size) > 1})
    if repeated:
        raise ProfileError(f"device profile '{where}' measures batch size(s) {repeated} more than once")
    return DeviceProfile(
        device_name=_text(document, "device_name", where),
        precision=_text(document, "precision", where),
        model=_text(document, "model", where),
        batch_sizes=tuple(sizes),
        batch_times_s=tuple(time_s for _, time_s in points),
    )


def _point(entry: object, index: int, where: str) -> tuple[int, float]:
    """(batch size, seconds per call) of one result."""
    prefix = f"device profile '{where}': results[{index}]"
    if not isinstance(entry, dict):
        raise ProfileError(f"{prefix} must be an object with batch_size and images_per_s")
    size, rate = entry.get("batch_size"), entry.get("images_per_s")
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_PROFILE_BATCH_SIZE:
        raise ProfileError(f"{prefix}.batch_size must be an integer in 1..{MAX_PROFILE_BATCH_SIZE}, got {size!r:.40}")
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not math.isfinite(rate) or rate <= 0:
        raise ProfileError(f"{prefix}.images_per_s must be a finite number > 0, got {rate!r:.40}")
    time_s = size / rate
    if not time_s <= MAX_BATCH_TIME_S:
        raise ProfileError(f"{prefix}: a batch of {size} at {rate:g} images/s takes {time_s:g} s; at most "
                           f"{MAX_BATCH_TIME_S:g} s")
    return size, time_s


def _text(document: dict, key: str, where: str) -> str:
    value = document.get(key, "")
    if not isinstance(value, str) or len(value) > 200 or not value.isprintable():
        raise ProfileError(f"device profile '{where}': '{key}' must be printable text of at most 200 characters")
    return value
