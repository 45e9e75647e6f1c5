"""Human durations (``10s``, ``500ms``, ``2m``, ``1h``) to seconds and back, for every command's options."""

from __future__ import annotations

import re

_UNITS_S = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|ms|s|m|h)?\s*$")


def parse_duration_s(text: str) -> float:
    """Return the duration ``text`` in seconds; a bare number means seconds.

    Raises ``ValueError`` with the accepted forms when ``text`` is not a duration.
    """
    match = _PATTERN.match(text)
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use a number with a unit, e.g. 10s, 500ms, 2m, 1h")
    value, unit = match.groups()
    return float(value) * _UNITS_S[unit or "s"]


def format_duration_s(seconds: float) -> str:
    """Shortest readable form of ``seconds`` (``0.5`` -> ``500ms``, ``120`` -> ``2m``)."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    if seconds >= 1 or seconds == 0:
        return f"{seconds:g}s"
    return f"{seconds * 1e3:g}ms"
