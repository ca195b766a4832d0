"""Model specs remembered by the file's SHA-256, so a model's header is parsed once per
machine and code, not once per campaign or `advise`.

Parsing a GGUF header with gguf.GGUFReader builds a numpy view per element of every
metadata array: the embedded model's 49,152-token vocabulary and its merges take 3 s of
CPU, every time (a 30 GB model's header costs the same). The spec is a function of the
file's bytes and of the code that reads them, so it is kept under both: the file's
SHA-256 (computed for every inspection anyway: it is the model's identity in the store)
and a digest of the reading code's source (this package's gguf_inspect and the tensor
name rules it applies). A change to either reads the header again. Only files of at
least MIN_BYTES are remembered: a small file parses in milliseconds, and the tests' many
hand-made ones would only fill the folder. The cache is best effort: a folder that
cannot be written, or an entry that cannot be read, costs a parse, never an error.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import tempfile
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collector.gguf_inspect import ModelSpec

MIN_BYTES = 16 << 20
# ModelSpec fields held as tuples (JSON gives lists back).
_TUPLES = ("moe_layers", "expert_tensor_names")


def remembered(sha256: str, file_bytes: int, path: Path) -> ModelSpec | None:
    """The spec of the file with this SHA-256, as read before by this code, at `path`."""
    from collector.gguf_inspect import ModelSpec

    entry = _entry(sha256, file_bytes)
    if entry is None:
        return None
    try:
        data = json.loads(entry.read_text(encoding="utf-8"))
        names = {f.name for f in dataclasses.fields(ModelSpec)}
        if not isinstance(data, dict) or set(data) != names - {"path"}:
            return None
        for name in _TUPLES:
            data[name] = tuple(data[name])
        data["expert_bytes_by_layer"] = tuple(
            (int(b), int(n)) for b, n in data["expert_bytes_by_layer"]
        )
        return ModelSpec(path=str(path.resolve()), **data)
    except (OSError, ValueError, TypeError):
        return None


def remember(spec: ModelSpec) -> None:
    """Keep `spec` for the next inspection of the same bytes (atomically; or not at all)."""
    entry = _entry(spec.sha256, spec.file_bytes)
    if entry is None:
        return
    data: dict[str, Any] = dataclasses.asdict(spec)
    del data["path"]  # the same bytes may be read from anywhere
    with contextlib.suppress(OSError):
        entry.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=entry.parent, prefix=".spec-", suffix=".json")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out)
            os.replace(tmp, entry)
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def _entry(sha256: str, file_bytes: int) -> Path | None:
    if file_bytes < MIN_BYTES:
        return None
    from collector.engine import cache_dir

    try:
        code = _code_digest()
    except OSError:  # the code's source is not on disk (a frozen build): no cache
        return None
    return cache_dir() / "specs" / f"{sha256}-{code}.json"


@cache
def _code_digest() -> str:
    """A digest of the code that turns a GGUF header into a spec."""
    from collector import gguf_inspect
    from evidence import llama_names

    digest = hashlib.sha256()
    for module in (gguf_inspect, llama_names):
        digest.update(Path(str(module.__file__)).read_bytes())
    return digest.hexdigest()[:16]
