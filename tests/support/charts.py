"""A chart's static SVG drawn once per spec in a test process (tests/conftest.py turns it
on for the whole run).

The SVG is a pure function of the chart's Vega-Lite spec, and vl_convert takes about
80 ms a chart: a build draws a dozen, and most builds of a test run draw the same ones.
test_report_build's same-store-same-site test draws every chart afresh
(`svgs_drawn_afresh`), so a conversion that stopped being reproducible still fails there."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

_SVGS: dict[tuple[str, str], str] = {}


def _remembered(draw: Callable[..., str]) -> Callable[..., str]:
    @functools.wraps(draw)
    def drawn(spec: dict[str, Any], vl_version: str, **options: Any) -> str:
        if options:
            return draw(spec, vl_version=vl_version, **options)
        key = (json.dumps(spec, sort_keys=True), vl_version)
        if key not in _SVGS:
            _SVGS[key] = draw(spec, vl_version=vl_version)
        return _SVGS[key]

    return drawn


@contextmanager
def svgs_remembered() -> Iterator[None]:
    """For the block: vl_convert.vegalite_to_svg remembers what it drew."""
    import vl_convert

    draw = vl_convert.vegalite_to_svg
    vl_convert.vegalite_to_svg = _remembered(draw)
    try:
        yield
    finally:
        vl_convert.vegalite_to_svg = draw


@contextmanager
def svgs_drawn_afresh() -> Iterator[None]:
    """For the block: every chart is drawn by vl_convert itself, remembered or not."""
    import vl_convert

    current = vl_convert.vegalite_to_svg
    vl_convert.vegalite_to_svg = getattr(current, "__wrapped__", current)
    try:
        yield
    finally:
        vl_convert.vegalite_to_svg = current
