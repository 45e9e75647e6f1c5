"""Step levels as perf_analyzer's users type them: ``1,2,4``, ``1:16`` (step 1), ``1:16:4`` (step 4) and
``1:64:x2`` (doubling), or several of these joined by commas. The number of levels is bounded before any is made."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

MAX_LEVELS = 256
"""Levels one option may expand to: each is a measured step, so more would be a run of days."""

_ROUNDING = 6
"""Decimal places kept on a fractional level (``0.1:0.5:0.1`` gives 0.3, not 0.30000000000000004)."""


def _number(text: str, kind: type) -> float | int:
    value = kind(text.strip())
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite number: {text.strip()!r}")
    return value


def _bounded(spans: float) -> int:
    """Levels in a range of ``spans`` steps (a hair of slack so that 1:64:x2 reaches 64 despite rounding)."""
    if not spans <= MAX_LEVELS:  # also catches inf and nan from a step of 1e-320
        raise ValueError(f"the range makes more than {MAX_LEVELS} levels")
    return math.floor(spans + 1e-9) + 1


def _range_count(start: float, end: float, step_text: str, kind: type) -> tuple[int, Callable[[int], float]]:
    """How many levels ``start:end:step`` holds and the level at each index, checked before any is made."""
    if end < start:
        raise ValueError(f"range end {end:g} is below its start {start:g}")
    if step_text.strip().lower().startswith("x"):
        factor = float(step_text.strip()[1:])
        if not math.isfinite(factor) or factor <= 1:
            raise ValueError(f"a range's factor must be above 1, got x{step_text.strip()[1:]}")
        if start <= 0:
            raise ValueError("a doubling range must start above 0")
        return _bounded(math.log(end / start) / math.log(factor)), lambda index: start * factor ** index
    step = _number(step_text, kind)
    if step <= 0:
        raise ValueError(f"a range's step must be above 0, got {step:g}")
    return _bounded((end - start) / step), lambda index: start + step * index


def expand_levels(text: str, kind: type = int) -> tuple:
    """The levels ``text`` names, in order; ValueError saying what is wrong otherwise."""
    levels: list = []
    for part in (piece for piece in text.split(",") if piece.strip()):
        fields = part.split(":")
        if len(fields) == 1:
            new = [_number(fields[0], kind)]
        elif len(fields) in (2, 3):
            start, end = _number(fields[0], kind), _number(fields[1], kind)
            count, level_at = _range_count(start, end, fields[2] if len(fields) == 3 else "1", kind)
            if len(levels) + count > MAX_LEVELS:
                raise ValueError(f"{part.strip()[:40]!r} makes more than {MAX_LEVELS} levels")
            rounded = [round(level_at(index)) if kind is int else round(level_at(index), _ROUNDING)
                       for index in range(count)]
            # a fractional factor can round two levels to one (1:10:x1.5 → 1, 2, 2, ...): run that level once
            new = [value for index, value in enumerate(rounded) if index == 0 or value != rounded[index - 1]]
        else:
            raise ValueError(f"{part.strip()[:40]!r} has {len(fields) - 1} colons: use START:END[:STEP]")
        levels.extend(new)  # a level named twice runs twice, as a comma list always has
        if len(levels) > MAX_LEVELS:
            raise ValueError(f"more than {MAX_LEVELS} levels")
    if not levels:
        raise ValueError("at least one level is needed")
    return tuple(levels)


def level_list(kind: type, what: str, example: str) -> Callable[[str], tuple]:
    """An option holding levels of ``kind`` in any of the forms above (argparse's type)."""

    def parse(text: str) -> tuple:
        try:
            return expand_levels(text, kind)
        except ValueError as error:
            raise argparse.ArgumentTypeError(
                f"invalid {what} list {text[:80]!r}: {error}; use e.g. {example}"
            ) from None

    parse.__name__ = f"{what} list"
    return parse
