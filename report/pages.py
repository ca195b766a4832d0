"""The site's pages, one declaration each, in navigation order.

A generated page is a `Page`: its name (templates/NAME.md.j2 renders it), where it is
written under docs/, its title and section in the navigation, the function that
builds its context, and the charts it draws. A hand-written page of docs/ is a
`HandWritten` entry, so the navigation has one source. The build iterates over
`SITE` and writes the navigation from it (report/site.py); mkdocs.yml lists no page.

Adding a page: a context module (report/context/NAME.py), a template
(templates/NAME.md.j2), and one `Page(...)` below, where it sits in the navigation;
then its line in .gitignore and its snapshot (tests/test_report_pages.py and
tests/test_report_build.py say so when they are missing).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import duckdb

from common.errors import BuildError
from report import charts
from report.context import (
    choosing_k,
    data,
    history,
    hosts,
    inventory,
    memory,
    methodology,
    models,
    performance,
    quality,
    reproduce,
    streaming,
    summary,
    validation,
)
from report.export import Export
from report.queries import Selection

if TYPE_CHECKING:
    from report.build import SourceFacts

WHITEPAPER = "Whitepaper"
APPENDIX = "Appendix"

# A page's charts: (its context, every configuration drawn, every test) -> charts by id.
DrawCharts = Callable[[Any, Sequence[str], Sequence[str]], charts.Charts]


class PageInputs:
    """What a context builder reads: the store (with the selection's views made), the
    source's identity, the Parquet exports, and the other pages' contexts (each built
    once, on first use, so a page may build on another's)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        sel: Selection,
        source: SourceFacts,
        exports: tuple[Export, ...],
    ) -> None:
        self.con = con
        self.sel = sel
        self.source = source
        self.exports = exports
        self._built: dict[str, Any] = {}
        self._building: list[str] = []

    def context(self, name: str) -> Any:
        """The context of the page called `name`."""
        if name not in self._built:
            if name in self._building:
                chain = " -> ".join([*self._building, name])
                raise BuildError(f"report/pages.py: pages build on each other ({chain})")
            self._building.append(name)
            self._built[name] = page(name).context(self)
            self._building.pop()
        return self._built[name]


@dataclass(frozen=True)
class Page:
    """A generated page: templates/{name}.md.j2 rendered into docs/{path}."""

    name: str
    title: str  # in the navigation; the page's own heading is in its template
    section: str
    context: Callable[[PageInputs], Any]
    charts: DrawCharts | None = None
    path: str = ""  # default: {name}.md
    # Whether the page is written (and in the navigation), given its context.
    shown: Callable[[Any], bool] = lambda _context: True
    # With no campaign, a page of measurements is one line saying so; a page that
    # explains the tool stays whole.
    whole_when_empty: bool = False

    @property
    def template(self) -> str:
        return f"{self.name}.md.j2"

    @property
    def page(self) -> str:
        """The Markdown file under docs/."""
        return self.path or f"{self.name}.md"


@dataclass(frozen=True)
class HandWritten:
    """A page written by hand in docs/, listed in the navigation."""

    title: str
    section: str
    page: str


SITE: tuple[Page | HandWritten, ...] = (
    Page(
        "index",
        "Summary",
        WHITEPAPER,
        lambda i: summary.build(
            i.con,
            i.sel,
            i.context("memory"),
            i.context("performance"),
            i.context("quality"),
            i.context("choosing-k"),
        ),
    ),
    Page(
        "choosing-k",
        "Choosing K",
        WHITEPAPER,
        lambda i: choosing_k.build(i.con, i.sel, i.context("memory")),
        charts.choosing_k_charts,
    ),
    Page(
        "memory",
        "Memory",
        WHITEPAPER,
        lambda i: memory.build(i.con, i.sel),
        charts.memory_charts,
    ),
    Page(
        "performance",
        "Performance",
        WHITEPAPER,
        lambda i: performance.build(i.con, i.sel, i.context("memory").runs),
        charts.performance_charts,
    ),
    Page(
        "streaming",
        "Streaming",
        WHITEPAPER,
        lambda i: streaming.build(i.con, i.sel),
        charts.streaming_charts,
    ),
    Page(
        "quality",
        "Quality",
        WHITEPAPER,
        lambda i: quality.build(i.con, i.sel),
        charts.quality_charts,
    ),
    Page(
        "transcripts-index",
        "Transcripts",
        WHITEPAPER,
        lambda i: i.context("quality"),
        path="transcripts/index.md",
    ),
    Page(
        "history",
        "History",
        WHITEPAPER,
        lambda i: history.build(i.con, i.sel, i.context("memory")),
        charts.history_charts,
        # One release: no history to show, and no page in the navigation.
        shown=lambda context: bool(context.enough),
    ),
    Page(
        "hardware",
        "Hardware and hosts",
        APPENDIX,
        lambda i: {"inventory": inventory.build(i.con, i.sel), "hosts": hosts.build(i.con, i.sel)},
    ),
    Page("models", "Models", APPENDIX, lambda i: models.build(i.con, i.sel)),
    Page(
        "methodology",
        "Methodology",
        APPENDIX,
        lambda i: methodology.build(i.con, i.sel),
        whole_when_empty=True,
    ),
    Page(
        "reproduce",
        "Reproduce",
        APPENDIX,
        lambda i: reproduce.build(
            i.con, i.sel, i.source.name, i.source.sha256, i.source.size, i.source.bundles
        ),
    ),
    Page("data", "Data and store schema", APPENDIX, lambda i: data.build(i.con, i.exports)),
    Page("validation", "Instrument validation", APPENDIX, lambda i: validation.build(i.con)),
    HandWritten("Many machines", APPENDIX, "fleet.md"),
)

PAGES: tuple[Page, ...] = tuple(p for p in SITE if isinstance(p, Page))


def page(name: str) -> Page:
    """The generated page called `name`."""
    for p in PAGES:
        if p.name == name:
            return p
    raise BuildError(f"no page called {name!r} in report/pages.py")


def nav(shown: Callable[[Page], bool]) -> list[dict[str, list[dict[str, str]]]]:
    """MkDocs' navigation: each section's pages in `SITE` order, the generated ones
    only where `shown`."""
    sections: dict[str, list[dict[str, str]]] = {}
    for p in SITE:
        entries = sections.setdefault(p.section, [])
        if isinstance(p, HandWritten) or shown(p):
            entries.append({p.title: p.page})
    return [{section: entries} for section, entries in sections.items() if entries]
