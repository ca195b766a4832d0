"""`nox -s perf`'s figures: a target's text is the one place its threshold is written."""

from __future__ import annotations

import pytest

from benchmarks.results import judged


@pytest.mark.parametrize(
    ("target", "passes", "fails"),
    [
        ("p99 < 1 ms", 0.99, 1.0),
        ("< 5 % of one core", 4.9, 5.0),
        (">= 100,000 rows/s", 100_000, 99_999),
        (">= 0.98", 0.98, 0.979),
        ("<= 1.1 (linear, 10 % for noise)", 1.1, 1.11),
    ],
)
def test_a_figure_passes_by_the_condition_its_target_states(
    target: str, passes: float, fails: float
) -> None:
    assert judged("figure", passes, "unit", target).passed is True
    assert judged("figure", fails, "unit", target).passed is False
    assert judged("figure", fails, "unit", target, note="n=3").detail == {"note": "n=3"}


def test_a_target_without_a_condition_is_refused() -> None:
    with pytest.raises(ValueError, match="states no condition"):
        judged("figure", 1.0, "ms", "as small as possible")
