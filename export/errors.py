"""Why an export could not be done: raised by the library, reported by the CLI (a preset goes on to its next model)."""

from __future__ import annotations


class ExportError(Exception):
    """An export that cannot go ahead: an unknown network, a missing image folder or package, bad settings."""
