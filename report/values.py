"""The shapes a figure takes on its way from SQL to a page.

Every number a page shows is one of these, so a template cannot print a bare
float without saying where it came from:

- `Quantity`: a single value with its unit and its source (measured by the
  collector, printed in the server's loader log, or estimated from the GGUF
  file), optionally with a note on how it was obtained;
- `Missing`: no value, and why (`not measured: no NVIDIA GPU on this host`);
- `Stat`: one metric over a group of requests: N, mean, spread, 95 % CI.

Values are in the store's base units (bytes, ms, s, tokens/s); the template
filters in `report.formatting` turn them into text.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from evidence.statistics import Summary

Source = Literal["measured", "log", "estimated", "derived"]

SOURCE_TEXT: dict[Source, str] = {
    "measured": "measured",
    "log": "from the server's loader log",
    "estimated": "estimated",
    "derived": "derived",
}


@dataclass(frozen=True)
class Quantity:
    """One value, its unit (`bytes`, `MiB`, `%`, `ms`, ...) and where it came from."""

    value: float
    unit: str
    source: Source | None = None
    note: str | None = None


@dataclass(frozen=True)
class Missing:
    """A figure that has no value, with the reason a reader is shown. Usually
    "not measured"; `not_applicable` when the figure has no meaning here."""

    reason: str
    not_applicable: bool = False


Figure = Quantity | Missing


@dataclass(frozen=True)
class Stat(Summary):
    """One metric summarised over one group of requests: the `Summary` (N, mean,
    spread, 95 % CI) with its unit, so it also goes straight into `ratio_of_means`."""

    unit: str
    # Requests in the group whose token count came from stream events, not a
    # tokenizer: the figure is then an estimate and the page says so.
    estimated_n: int = 0
    missing: str | None = None

    @classmethod
    def of(
        cls, summary: Summary, unit: str, estimated_n: int = 0, missing: str | None = None
    ) -> Stat:
        """A `Stat` from `evidence.statistics.summarize`'s result."""
        return cls(
            **asdict(summary),
            unit=unit,
            estimated_n=estimated_n,
            missing=missing if summary.n == 0 else None,
        )

    @classmethod
    def empty(cls, unit: str, reason: str) -> Stat:
        """A group with no value at all, and why."""
        return cls(0, None, None, None, None, None, None, unit=unit, missing=reason)


@dataclass(frozen=True)
class RatioFigure:
    """mean(a) / mean(b) with its 95 % CI (delta method), e.g. offload / baseline."""

    ratio: float | None
    ci_low: float | None
    ci_high: float | None
    missing: str | None = None
    n: int | None = None  # pairs (or requests) behind the ratio, when known
