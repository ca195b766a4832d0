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
    every = make_nav(lambda p: True)
    assert [next(iter(group)) for group in every] == ["Whitepaper", "Appendix"]
    listed = [entry for group in every for entries in group.values() for entry in entries]
    assert listed == [{p.title: p.page} for p in SITE]
    assert listed[0] == {"Summary": "index.md"}  # the site's home comes first
    # One release: no History page, and nothing else missing.
    one_release = make_nav(lambda p: p.name != "history")
    assert one_release[0]["Whitepaper"] == every[0]["Whitepaper"][:-1]
    assert every[0]["Whitepaper"][-1] == {"History": "history.md"}
    assert one_release[1:] == every[1:]


def test_mkdocs_yml_lists_no_page() -> None:
    # The build writes the navigation (report/site.py); a hand-made one would drift.
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    assert "nav" not in config


def test_an_unknown_page_is_named() -> None:
    with pytest.raises(BuildError, match="no page called 'no-such-page'"):
        page("no-such-page")


def test_two_pages_drawing_one_chart_id_is_refused() -> None:
    chart = Missing("no data")
    with pytest.raises(BuildError, match="page 'b' draws chart 'x', drawn already"):
        merge_charts([("a", {"x": chart}), ("b", {"x": chart})])


def test_every_generated_page_is_ignored_by_git() -> None:
    # The build writes them into docs/ beside the hand-written pages; none is committed.
    ignored = [
        line[len("/docs/") :]
        for line in (ROOT / ".gitignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("/docs/")
    ]
    for p in PAGES:
        assert any(p.page == i or (i.endswith("/") and p.page.startswith(i)) for i in ignored), (
            f"add /docs/{p.page} to .gitignore"
        )


def test_pages_that_build_on_each_other_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    from report import pages

    loop = (
        pages.Page("a", "A", "S", lambda i: i.context("b")),
        pages.Page("b", "B", "S", lambda i: i.context("a")),
    )
    monkeypatch.setattr(pages, "PAGES", loop)
    inputs = pages.PageInputs(None, None, None, ())  # type: ignore[arg-type]
    with pytest.raises(BuildError, match=r"build on each other \(a -> b -> a\)"):
        inputs.context("a")
