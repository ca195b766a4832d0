"""The one way a file's SHA-256 is taken (models, the engine's sdist, stores)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def file_sha256(path: Path) -> str:
    """The hex SHA-256 of the file at `path`, streamed (hashlib.file_digest)."""
    with path.open("rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()
