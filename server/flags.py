"""Command-line options declared on settings dataclasses: a field is its option, with its help text, default,
choices and parser declared once, where the setting is.

``ipsbench-serve``, ``ipsbench-load`` and ``ipsbench-export`` each build their parsers from their settings classes
with :func:`add_options` and read the values back with :func:`values`; nothing restates a default.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from ipsbench.server.durations import format_duration_s, parse_duration_s

_REQUIRED = dataclasses.MISSING


def option(
    default: Any = _REQUIRED,
    help: str = "",  # noqa: A002 - argparse's word
    *,
    flag: str | None = None,
    parse: Callable[[str], Any] | None = None,
    choices: Iterable[str] | None = None,
    metavar: str | None = None,
    repeat: bool = False,
    positional: bool = False,
    required: bool = False,
    cli: bool = True,
    default_factory: Callable[[], Any] | None = None,
    bounds: tuple[float | None, float | None] | None = None,
    must_be: str | None = None,
) -> Any:
    """A settings field that is also a command-line option.

    ``flag``: the option's name when it is not the field's (``window_s`` → ``--duration``); ``parse``: turns the
    text into the value (default: from the field's type); ``repeat``: the option may be given several times (a
    tuple); ``positional``: an argument without ``--``; ``required``: the command line must give it even though
    the dataclass has a default; ``cli`` False: a setting without an option; ``bounds``: (lowest, highest)
    allowed value of a number, either None for no bound (checked when parsed and by :func:`check_bounds`);
    ``must_be``: ``"directory"`` or ``"file"``, a path that must exist as one on this machine (checked by
    :func:`path_problem` once the whole command line is parsed, so that ``--help`` and a parse-only check of a
    command meant for another machine still work).
    """
    metadata = {"help": help, "flag": flag, "parse": parse, "choices": tuple(choices) if choices else None,
                "metavar": metavar, "repeat": repeat, "positional": positional, "required": required, "cli": cli,
                "bounds": bounds, "must_be": must_be}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    if default is _REQUIRED:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def finite_float(text: str) -> float:
    """A number option's value: a finite float (``nan`` and ``inf`` are refused, as no setting means them)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid number {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value


def integer(text: str) -> int:
    """An integer option's value."""
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid integer {text!r}") from None


def path_problem(args: argparse.Namespace, settings_class: type) -> str | None:
    """The first option of ``settings_class`` whose path is not there as its field's ``must_be`` says, as argparse
    words it (``argument --x: '/p' does not exist``); None when every one is."""
    for field in options_of(settings_class):
        kind = field.metadata.get("must_be")
        value = getattr(args, field.name, None)
        if kind is None or value is None:
            continue
        path = Path(value)
        if not path.exists():
            problem = f"'{value}' does not exist"
        elif kind == "directory" and not path.is_dir():
            problem = f"'{value}' is not a directory"
        elif kind == "file" and not path.is_file():
            problem = f"'{value}' is not a file"
        elif kind == "file" and not os.access(path, os.R_OK):
            problem = f"'{value}' cannot be read"
        else:
            continue
        return f"argument {_flag(field)}: {problem}"
    return None


_PARSERS: dict[str, Callable[[str], Any]] = {
    "int": integer, "int | None": integer, "float": finite_float, "float | None": finite_float,
    "str": str, "str | None": str, "Path": Path, "Path | None": Path,
}
"""How an option's text becomes its field's value, by the field's type (unless the field says ``parse=``)."""


def bounds_text(bounds: tuple[float | None, float | None]) -> str:
    low, high = bounds
    if high is None:
        return f">= {low:g}"
    if low is None:
        return f"<= {high:g}"
    return f"in {low:g}..{high:g}"


def out_of_bounds(value: Any, bounds: tuple[float | None, float | None] | None) -> bool:
    if bounds is None or value is None:
        return False
    low, high = bounds
    return (low is not None and value < low) or (high is not None and value > high)


def check_bounds(settings: Any) -> None:
    """``ValueError`` naming the option of the first field of ``settings`` outside its declared bounds (for
    settings built without the command line; the parser refuses the same values with a usage error)."""
    for field in dataclasses.fields(settings):
        bounds = field.metadata.get("bounds")
        value = getattr(settings, field.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{_flag(field)} must be a finite number, got {value}")
        if out_of_bounds(value, bounds):
            raise ValueError(f"{_flag(field)} must be {bounds_text(bounds)}, got {value:g}")


def _flag(field: dataclasses.Field) -> str:
    return field.metadata.get("flag") or "--" + field.name.replace("_", "-")


def _bounded(parse: Callable[[str], Any], bounds: tuple[float | None, float | None]) -> Callable[[str], Any]:
    def checked(text: str) -> Any:
        value = parse(text)
        if out_of_bounds(value, bounds):
            raise argparse.ArgumentTypeError(f"must be {bounds_text(bounds)}, got {text}")
        return value

    checked.__name__ = getattr(parse, "__name__", "value")
    return checked


def duration(text: str) -> float:
    """An option's duration (``10s``, ``500ms``, ``2m``) in seconds."""
    try:
        return parse_duration_s(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def comma_list(kind: Callable[[str], Any], what: str, example: str) -> Callable[[str], tuple]:
    """An option holding a comma-separated list (``1,2,4``) of ``kind``."""

    def parse(text: str) -> tuple:
        try:
            items = tuple(kind(part) for part in text.split(",") if part.strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} list {text!r}: use e.g. {example}") from None
        if not items:
            raise argparse.ArgumentTypeError(f"at least one {what} is needed")
        return items

    parse.__name__ = f"{what} list"
    return parse


def options_of(
    settings_class: type, skip: Iterable[str] = (), only: Iterable[str] | None = None
) -> list[dataclasses.Field]:
    """The fields of ``settings_class`` that have options (``only`` these, less ``skip``), in declaration order."""
    skipped = set(skip)
    chosen = None if only is None else set(only)
    return [f for f in dataclasses.fields(settings_class)
            if f.metadata.get("cli", False) and f.name not in skipped and (chosen is None or f.name in chosen)]


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    settings_class: type,
    *,
    skip: Iterable[str] = (),
    only: Iterable[str] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> None:
    """An option per field of ``settings_class`` (``only``: just these fields; ``skip``: fields left out;
    ``defaults``: a command's own default for a field, e.g. one trial for ramp)."""
    for field in options_of(settings_class, skip, only):
        meta = field.metadata
        default = _default(field)
        if defaults and field.name in defaults:
            default = defaults[field.name]
        help_text = meta["help"].replace("%", "%%")
        if meta["positional"]:
            optional = not meta["required"] and default is not _REQUIRED
            parser.add_argument(field.name, nargs="?" if optional else None, default=default if optional else None,
                                help=help_text, type=_parser(field), metavar=meta["metavar"])
            continue
        flag = meta["flag"] or "--" + field.name.replace("_", "-")
        kind = str(field.type)
        if kind in ("bool", "bool | None") and meta["parse"] is None:
            parser.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=default,
                                help=help_text + _shown(field, default))
            continue
        extra: dict[str, Any] = {}
        if meta["repeat"]:
            extra["action"] = "append"
            default = None  # argparse appends to a list of its own; values() turns None into the field's default
        if meta["choices"]:
            extra["choices"] = meta["choices"]
        extra["metavar"] = meta["metavar"] or (None if meta["choices"] else flag[2:].replace("-", "_").upper())
        required = meta["required"] or (default is _REQUIRED)
        parser.add_argument(
            flag, dest=field.name, type=_parser(field), required=required,
            default=None if required else default,
            help=help_text + ("" if required or meta["repeat"] else _shown(field, default)), **extra,
        )


def values(
    args: argparse.Namespace, settings_class: type, skip: Iterable[str] = (), only: Iterable[str] | None = None
) -> dict[str, Any]:
    """The options of ``settings_class`` as parsed, ready for ``settings_class(**values, ...)``."""
    result = {}
    for field in options_of(settings_class, skip, only):
        value = getattr(args, field.name)
        if field.metadata["repeat"]:
            value = tuple(value) if value else _default(field)
        result[field.name] = value
    return result


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return _REQUIRED


def _parser(field: dataclasses.Field) -> Callable[[str], Any]:
    parse = field.metadata["parse"]
    if parse is None:
        kind = str(field.type)
        if field.metadata["repeat"]:
            kind = "str"
        try:
            parse = _PARSERS[kind]
        except KeyError:
            raise TypeError(f"field {field.name!r} of type {kind} needs parse= to be an option") from None
    bounds = field.metadata.get("bounds")
    return _bounded(parse, bounds) if bounds else parse


def _shown(field: dataclasses.Field, default: Any) -> str:
    if default in (None, (), "", _REQUIRED) or isinstance(default, bool) and not default:
        return ""
    if field.metadata["parse"] is duration:
        default = format_duration_s(default)
    if isinstance(default, tuple):
        default = ",".join(str(v) for v in default)
    return f" (default: {str(default).replace('%', '%%')})"
