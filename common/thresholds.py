"""The release gates' default thresholds, read from `gate_thresholds.toml`."""

from __future__ import annotations

import tomllib
from importlib import resources


def _load() -> dict[str, float]:
    text = resources.files("common").joinpath("gate_thresholds.toml").read_text(encoding="utf-8")
    return {name: float(value) for name, value in tomllib.loads(text).items()}


DEFAULT_THRESHOLDS: dict[str, float] = _load()
