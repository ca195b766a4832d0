"""Figures become text in one place: escaping, units, provenance, refusals."""

from __future__ import annotations

import math
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st
from markupsafe import Markup

from common.errors import BuildError
from evidence.statistics import summarize
from report import formatting as f
from report.values import Missing, Quantity, RatioFigure, Stat

HOSTILE = [
    "<script>alert(1)</script>",
    '<img src=x onerror="alert(2)">',
    "{{ 7 * 7 }} {% raw %}",
    "| a | b |",
    "[x](javascript:alert(1))",
    '--8<-- "/etc/passwd"',
    '{: onclick="alert(4)" }',
    "**bold** _it_ `code` # head",
    "\x02klzzwxh:0000\x03",
]


_ENTITY = re.compile(r"&#\d+;")


@pytest.mark.parametrize("text", HOSTILE)
def test_escape_leaves_no_markup_character(text: str) -> None:
    out = _ENTITY.sub("", str(f.escape_text(text)))
    for ch in "<>{}[]|`*_#\"'&":
        assert ch not in out
    assert "\x02" not in out and "\x03" not in out


@given(st.text())
def test_escape_is_inert_for_any_text(text: str) -> None:
    out = _ENTITY.sub("", str(f.escape_text(text)))
    assert not any(ch in out for ch in "<>[]{}|`*_#&\n\x02\x03")


def test_transcript_keeps_line_breaks_and_is_marked_untrusted() -> None:
    out = str(f.transcript("a\n</pre><script>x</script>\nb"))
    assert out.startswith('<pre class="untrusted transcript">') and out.endswith("</pre>")
    assert out.count("</pre>") == 1 and "\n" in out and "<script>" not in out


def test_numbers_have_sensible_precision() -> None:
    assert f.number(1234.5) == "1,234" or f.number(1234.5) == "1,235"
    assert f.number(412.3) == "412"
    assert f.number(46.93) == "46.9"
    assert f.number(3.521) == "3.52"
    assert f.number(0.0312) == "0.031"
    assert f.number(64) == "64"
    with pytest.raises(BuildError):
        f.number(math.nan)
    with pytest.raises(BuildError):
        f.number(None)


def test_units() -> None:
    # Memory is always in MiB, so that figures on one page compare at a glance.
    assert str(f.with_unit(12.3 * (1 << 30), "bytes")) == "12,595.2&nbsp;MiB"
    assert str(f.with_unit(1899.8, "MiB")) == "1,899.8&nbsp;MiB"
    assert str(f.with_unit(24715.7, "MiB")) == "24,715.7&nbsp;MiB"
    assert str(f.with_unit(71.5, "%")) == "71.5&nbsp;%"
    assert str(f.with_unit(16_380_000_000, "params")) == "16.38&nbsp;B"


def test_a_figure_always_says_where_it_came_from() -> None:
    assert "estimated" in f.figure(Quantity(84.0, "%", "estimated", "GGUF"))
    assert "measured" in f.figure(Quantity(71.5, "%", "measured"))
    assert "loader log" in f.figure(Quantity(1899.8, "MiB", "log"))
    missing = str(f.figure(Missing("no NVIDIA GPU on this host (NVML: not found)")))
    assert missing.startswith('<span class="not-measured">not measured</span> (no NVIDIA GPU')


def test_stats_show_n_and_spread_or_say_why_not() -> None:
    three = Stat.of(summarize(3, 10.0, 1.0, 9.0, 11.0), "tokens/s")
    assert str(f.stat(three)) == "10.0&nbsp;±&nbsp;1.00&nbsp;tokens/s (N&nbsp;=&nbsp;3)"
    assert "–" in f.stat_ci(three)
    one = Stat.of(summarize(1, 10.0, None, 10.0, 10.0), "ms")
    assert "too few" in f.stat_sd(one) and "too few for an interval" in f.stat_ci(one)
    # Two values give a standard deviation but a t-interval too wide to mean anything.
    two = Stat.of(summarize(2, 10.0, 1.0, 9.0, 11.0), "ms")
    assert "±" not in f.stat(two) and "N&nbsp;=&nbsp;2, too few for an interval" in f.stat_ci(two)
    empty = Stat.empty("ms", "no successful streamed request")
    assert "not measured" in f.stat(empty) and "no successful" in f.stat_mean(empty)
    estimated = Stat.of(summarize(2, 5.0, 1.0, 4.0, 6.0), "tokens/s", estimated_n=1)
    assert "estimated" in f.stat_mean(estimated)


def test_ratio() -> None:
    assert str(f.ratio(RatioFigure(0.21, 0.19, 0.23))).startswith("0.21×")
    assert "not measured" in f.ratio(RatioFigure(None, None, None, "no baseline"))


def test_finalize_refuses_unformatted_figures() -> None:
    with pytest.raises(BuildError, match="None"):
        f.finalize(None)
    with pytest.raises(BuildError, match="float"):
        f.finalize(0.1)
    assert f.finalize(3) == "3"
    assert isinstance(f.finalize("<b>"), Markup) and "<b>" not in f.finalize("<b>")


def test_links_and_anchors_are_restricted() -> None:
    assert f.link("data/chunks.parquet") == "data/chunks.parquet"
    with pytest.raises(BuildError):
        f.link("javascript:alert(1)")
    with pytest.raises(BuildError):
        f.link("../../etc/passwd")
    assert f.anchor("Server Runs!") == "server-runs"


def test_an_interval_below_zero_is_truncated_and_says_so() -> None:
    wide = Stat.of(summarize(3, 21.0, 25.0, 3.3, 38.7), "tokens/s")
    text = str(f.stat_ci(wide))
    assert text.startswith("0&nbsp;–&nbsp;") and "truncated at 0" in text
