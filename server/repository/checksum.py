"""SHA-256 manifests for model files that are code or opaque engines (TorchScript, TensorRT plans).

The exporter writes ``<file>.sha256`` next to the model file, in ``sha256sum`` format; the server checks it before the
file reaches a deserializer. A file without a manifest, or one that no longer matches it, is refused: such formats
can run arbitrary code when loaded, so only files whose origin was checked may be served.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

SUFFIX = ".sha256"
CHUNK_BYTES = 1 << 20
MAX_MANIFEST_BYTES = 4096
_DIGEST = re.compile(r"^[0-9a-f]{64}$")


class ChecksumError(Exception):
    """A model file whose manifest is missing, malformed or does not match."""


def manifest_path(path: Path) -> Path:
    """``model.pt`` → ``model.pt.sha256`` in the same folder."""
    return path.with_name(path.name + SUFFIX)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while chunk := file.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def write_checksum(path: Path) -> Path:
    """Record the SHA-256 of ``path`` next to it; returns the manifest's path."""
    manifest = manifest_path(path)
    manifest.write_text(f"{file_sha256(path)}  {path.name}\n", encoding="ascii")
    return manifest


def verify_checksum(path: Path) -> None:
    """Raise :class:`ChecksumError` unless ``path`` matches the digest in its manifest."""
    manifest = manifest_path(path)
    if not manifest.is_file():
        raise ChecksumError(
            f"{path.name} has no checksum file {manifest.name}. This format runs code when loaded: serve only "
            f"files you trust, exported by ipsbench-export or recorded with `sha256sum {path.name} > "
            f"{manifest.name}` in the version folder after checking where the file came from"
        )
    with open(manifest, "rb") as file:
        text = file.read(MAX_MANIFEST_BYTES + 1)
    fields = text.decode("ascii", errors="replace").split()
    if len(text) > MAX_MANIFEST_BYTES or not fields or not _DIGEST.match(fields[0].lower()):
        raise ChecksumError(f"{manifest.name} is not a SHA-256 manifest ('<64 hex digits>  {path.name}')")
    expected = fields[0].lower()
    actual = file_sha256(path)
    if actual != expected:
        raise ChecksumError(
            f"{path.name} does not match {manifest.name} (SHA-256 {actual}, expected {expected}): "
            "the file changed after its checksum was recorded"
        )
