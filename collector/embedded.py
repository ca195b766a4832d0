"""The embedded default's model: SmolLM2-135M-Instruct upcycled to a small MoE.

Made once per machine into the cache directory; the file is deterministic, so
its sha256 is the same on every machine and identifies it in the store.
"""

from __future__ import annotations

from pathlib import Path

from collector.defaults import EMBEDDED_EXPERTS, EMBEDDED_EXPERTS_USED, EMBEDDED_SEED
from collector.engine import cache_dir
from collector.upcycle import find_smollm2_gguf, upcycle_cache_key, upcycle_to_moe


def ensure_embedded_model() -> Path:
    """Path of the upcycled MoE GGUF, building it from the PyPI-shipped dense model if needed."""
    key = upcycle_cache_key(EMBEDDED_EXPERTS, EMBEDDED_EXPERTS_USED, EMBEDDED_SEED)
    target = cache_dir() / "models" / f"{key}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    return upcycle_to_moe(
        find_smollm2_gguf(),
        target,
        experts=EMBEDDED_EXPERTS,
        experts_used=EMBEDDED_EXPERTS_USED,
        seed=EMBEDDED_SEED,
    )
