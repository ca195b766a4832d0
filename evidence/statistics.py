"""Summaries of a metric over a group: N, mean, spread, the 95% CI, and ratios.

One way to summarise, used by every page and gate: the SQL gives n, mean, sd,
min and max per group (`aggregate_sql`), and `summarize` attaches the
t-based interval; an offload/baseline comparison is `ratio_of_means`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# Two-sided 95% critical values of Student's t by degrees of freedom; beyond 30
# the normal value 1.96 is within 2% and is used.
_T95 = (
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
)


def t95(df: int) -> float:
    """Two-sided 95% Student t critical value for `df` degrees of freedom."""
    if df < 1:
        return math.nan
    return _T95[df - 1] if df <= len(_T95) else 1.96


@dataclass(frozen=True)
class Summary:
    """N, mean, spread and 95% confidence interval of one metric in one group."""

    n: int
    mean: float | None
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    min: float | None
    max: float | None


# Below three values a 95% interval says nothing a reader can use (with N = 2,
# t = 12.7 makes it wider than the data); none is computed, drawn or printed.
MIN_N_FOR_INTERVAL = 3


def summarize(
    n: int, mean: float | None, sd: float | None, lo: float | None, hi: float | None
) -> Summary:
    """Attach the t-based 95% CI of the mean (none for N < MIN_N_FOR_INTERVAL)."""
    if n >= MIN_N_FOR_INTERVAL and mean is not None and sd is not None:
        half = t95(n - 1) * sd / math.sqrt(n)
        return Summary(n, mean, sd, mean - half, mean + half, lo, hi)
    return Summary(n, mean, sd, None, None, lo, hi)


def aggregate_sql(
    column: str, group_cols: list[str], source: str = "request_metrics", where: str = "TRUE"
) -> str:
    """SQL giving n, mean, sd, min, max of `column` per group (CI: see `summarize`)."""
    groups = ", ".join(group_cols)
    select_groups = f"{groups}, " if groups else ""
    group_by = f"GROUP BY {groups} ORDER BY {groups}" if groups else ""
    return (
        f"SELECT {select_groups}count({column}) AS n, avg({column}) AS mean, "
        f"stddev_samp({column}) AS sd, min({column}) AS min, max({column}) AS max "
        f"FROM {source} WHERE ({where}) AND {column} IS NOT NULL {group_by}"
    )


@dataclass(frozen=True)
class Ratio:
    """Ratio of two means with a delta-method 95% CI."""

    ratio: float | None
    ci_low: float | None
    ci_high: float | None


def paired_ratio(ratios: list[float]) -> tuple[Ratio, int]:
    """The offload/baseline ratio over pairs of requests that differ only in the
    configuration (same test, repeat, seed and streaming mode): the geometric mean
    of the per-pair ratios, with a t-based 95% CI on the log scale,
    exp(mean(ln r) ± t·sd(ln r)/√N), from N = MIN_N_FOR_INTERVAL pairs. Pairing
    removes what the two sides share (the test, the output length), so the
    interval is far narrower than one that treats the sides as independent.
    Returns the ratio and N (pairs with a positive ratio)."""
    logs = [math.log(r) for r in ratios if r > 0 and math.isfinite(r)]
    n = len(logs)
    if n == 0:
        return Ratio(None, None, None), 0
    mean = sum(logs) / n
    if n < MIN_N_FOR_INTERVAL:
        return Ratio(math.exp(mean), None, None), n
    sd = math.sqrt(sum((x - mean) ** 2 for x in logs) / (n - 1))
    half = t95(n - 1) * sd / math.sqrt(n)
    return Ratio(math.exp(mean), math.exp(mean - half), math.exp(mean + half)), n


def ratio_of_means(a: Summary, b: Summary) -> Ratio:
    """mean(a) / mean(b), e.g. offload / baseline, with a 95% CI computed on the
    log scale (delta method, independent samples), so it stays positive:
    se(ln r) = sqrt(sd_a²/(n_a·mean_a²) + sd_b²/(n_b·mean_b²)), CI = r·exp(±t·se),
    t at the smaller sample's degrees of freedom."""
    if a.mean is None or b.mean is None or b.mean == 0 or a.n < 1 or b.n < 1:
        return Ratio(None, None, None)
    r = a.mean / b.mean
    if (
        min(a.n, b.n) < MIN_N_FOR_INTERVAL
        or a.sd is None
        or b.sd is None
        or a.mean <= 0
        or b.mean <= 0
    ):
        return Ratio(r, None, None)
    se = math.sqrt((a.sd**2) / (a.n * a.mean**2) + (b.sd**2) / (b.n * b.mean**2))
    factor = math.exp(t95(min(a.n, b.n) - 1) * se)
    return Ratio(r, r / factor, r * factor)
