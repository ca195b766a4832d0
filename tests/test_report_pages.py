"""The page declarations (report/pages.py): one per page, and the navigation made from them."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from common.errors import BuildError
from report.charts import merge_charts
from report.pages import PAGES, SITE, HandWritten, page
from report.pages import nav as make_nav
from report.values import Missing

ROOT = Path(__file__).resolve().parents[1]
# Templates that render no page of their own: macros, the empty-store page, one
# transcript per test (linked from the Transcripts page, outside the navigation).
PARTIALS = {"_macros.md.j2", "empty.md.j2", "transcripts.md.j2"}

# The navigation readers know; a change to it is a change to the site.
WHITEPAPER = [
    {"Summary": "index.md"},
    {"Memory": "memory.md"},
    {"Performance": "performance.md"},
    {"Streaming": "streaming.md"},
    {"Quality": "quality.md"},
    {"Transcripts": "transcripts/index.md"},
]
APPENDIX = [
    {"Hardware and hosts": "hardware.md"},
    {"Models": "models.md"},
    {"Methodology": "methodology.md"},
    {"Reproduce": "reproduce.md"},
    {"Data and store schema": "data.md"},
    {"Instrument validation": "validation.md"},
    {"Many machines": "fleet.md"},
]


def test_every_template_is_a_declared_page_and_every_page_has_one() -> None:
    templates = {p.name for p in (ROOT / "templates").glob("*.md.j2")} - PARTIALS
    assert templates == {p.template for p in PAGES}
    assert len({p.name for p in PAGES}) == len(PAGES)
    assert len({p.page for p in SITE}) == len(SITE)


def test_hand_written_pages_exist() -> None:
    for p in SITE:
        if isinstance(p, HandWritten):
            assert (ROOT / "docs" / p.page).is_file(), p.page


def test_the_navigation_is_the_declarations_in_order() -> None:
    one_release = make_nav(lambda p: p.name != "history")
    assert one_release == [{"Whitepaper": WHITEPAPER}, {"Appendix": APPENDIX}]
    # Two or more releases: History closes the whitepaper group.
    releases = make_nav(lambda p: True)
    assert releases == [
        {"Whitepaper": [*WHITEPAPER, {"History": "history.md"}]},
        {"Appendix": APPENDIX},
    ]


def test_mkdocs_yml_lists_no_page() -> None:
    # The build writes the navigation (report/site.py); a hand-made one would drift.
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert "nav" not in config


def test_an_unknown_page_is_named() -> None:
    with pytest.raises(BuildError, match="no page called 'glossary'"):
        page("glossary")


def test_two_pages_drawing_one_chart_id_is_refused() -> None:
    chart = Missing("no data")
    with pytest.raises(BuildError, match="page 'b' draws chart 'x', drawn already"):
        merge_charts([("a", {"x": chart}), ("b", {"x": chart})])
