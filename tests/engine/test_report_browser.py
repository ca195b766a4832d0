"""The built site in headless Chromium with the network off: every page loads
without a console error, every chart draws, and hostile model output is text;
a site of several hosts and releases shows them side by side and over time."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from report.pages import SITE
from tests.support.report import build, project, serve, synthetic_store

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        not CHROMIUM.exists() or shutil.which("chromium") is None,
        reason="needs Chromium at /usr/bin/chromium (apt-get install chromium); CI installs it",
    ),
]


def _url_path(page: str) -> str:
    stem = page[: -len(".md")]
    if stem == "index":
        return ""
    return stem[: -len("index")] if stem.endswith("/index") else stem + "/"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("browser")
    db = tmp / "quick.duckdb"
    synthetic_store(db, gpu=True, sweep=(8,), requests=60, chunks=1500)
    return build(db, project(tmp)).site_dir


@pytest.fixture(scope="module")
def fleet_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three synthetic campaigns: a GPU host in two releases and a CPU-only host in
    the second, all shown."""
    from evidence.store import open_store

    tmp = tmp_path_factory.mktemp("browser-fleet")
    db = tmp / "fleet.duckdb"
    for hours, (gpu, seed, release) in enumerate(
        ((True, 1, "fleet-1.6"), (True, 2, "fleet-1.7"), (False, 3, "fleet-1.7"))
    ):
        campaign = synthetic_store(db, gpu=gpu, seed=seed, requests=40, chunks=700)
        with open_store(db) as con:
            con.execute(
                "UPDATE campaigns SET release_label = ?, "
                "started_utc = started_utc + to_hours(?) WHERE campaign_id = ?",
                [release, hours, campaign],
            )
    return build(db, project(tmp), all_campaigns=True).site_dir


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield b
        b.close()


class Visit:
    """A page opened with every non-local request blocked and recorded."""

    def __init__(
        self, browser: Any, base: str, path: str, viewport: tuple[int, int] = (1280, 900)
    ) -> None:
        self.errors: list[str] = []
        self.external: list[str] = []
        self.dialogs: list[str] = []
        width, height = viewport
        self.context = browser.new_context(viewport={"width": width, "height": height})
        self.context.route("**/*", self._route(base))
        self.page = self.context.new_page()
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("dialog", self._dialog)
        response = self.page.goto(base + path, wait_until="networkidle")
        assert response is not None and response.ok, f"{path}: HTTP {response and response.status}"

    def _console(self, message: Any) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def _dialog(self, dialog: Any) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def _route(self, base: str) -> Any:
        def handle(route: Any) -> None:
            if route.request.url.startswith(base):
                route.continue_()
            else:
                self.external.append(route.request.url)
                route.abort()

        return handle

    def close(self) -> None:
        self.context.close()


def _pages(site: Path) -> list[str]:
    # Every page of the navigation, hand-written ones included.
    pages = [_url_path(p.page) for p in SITE if p.page != "history.md"]
    if (site / "history" / "index.html").is_file():
        pages.append("history/")
    pages += [
        f"transcripts/{p.name}/" for p in sorted((site / "transcripts").iterdir()) if p.is_dir()
    ]
    return pages


def _first_screen(site: Path, browser: Any, shot: Path) -> str:
    """Screenshot the first 1400 x 900 px of the summary; check the answer block and the
    scope line both end inside it; return the answer's text."""
    with serve(site) as base:
        visit = Visit(browser, base, "", viewport=(1400, 900))
        try:
            visit.page.screenshot(path=str(shot))
            assert shot.stat().st_size > 10_000
            answer = visit.page.locator(".answer").first
            scope = visit.page.locator(".scope li").first
            a, s = answer.bounding_box(), scope.bounding_box()
            assert a is not None and s is not None
            assert a["y"] + a["height"] <= 900, (
                f"answer block ends at {a['y'] + a['height']:.0f} px"
            )
            assert s["y"] + s["height"] <= 900, f"scope line ends at {s['y'] + s['height']:.0f} px"
            text = str(answer.inner_text())
            for question in ("VRAM saved", "Decode speed", "Time to first token", "Outputs"):
                assert question in text
            assert visit.page.locator(".scope").inner_text().count("Device:") == 1
            return text
        finally:
            visit.close()


def test_the_first_screen_answers_and_says_what_the_run_cannot_show(
    site: Path, browser: Any, tmp_path: Path
) -> None:
    """A maintainer sees the answer and its scope without scrolling: 1400 x 900."""
    _first_screen(site, browser, tmp_path / "first-screen.png")


@pytest.fixture(scope="module")
def quick_site(quick_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site of the session's real quick campaign (its sweep ran the speed probes).
    Starved requests count: on a busy host a sweep's every probe may be starved, and
    these tests read the pages' shape, not the host's load."""
    root = project(tmp_path_factory.mktemp("quick-site"))
    return build(quick_store, root, include_starved=True).site_dir


@pytest.mark.engine
def test_the_first_screen_of_a_real_quick_campaign(
    quick_site: Path, browser: Any, tmp_path: Path
) -> None:
    """The same on a real quick run on the RPC device: its saving is measured."""
    text = _first_screen(quick_site, browser, tmp_path / "first-screen.png")
    assert "(measured)" in text
    assert "the fastest K measured" in text


@pytest.mark.engine
def test_choosing_k_draws_the_real_curve(quick_site: Path, browser: Any) -> None:
    """The Choosing K page of a real sweep: both charts drawn live, a row per K."""
    with serve(quick_site) as base:
        visit = Visit(browser, base, "choosing-k/")
        try:
            assert visit.errors == [] and visit.external == []
            figures = visit.page.locator("figure.chart")
            assert figures.count() == 2
            visit.page.wait_for_function(
                "document.querySelectorAll('figure.chart-live').length === 2", timeout=15_000
            )
            text = visit.page.locator("article").inner_text()
            for k in (0, 10, 20, 30):
                assert f"smollm2-moe-4x2\t{k}\t" in text, k
            assert "calibration point" in text
        finally:
            visit.close()


def test_every_page_loads_offline_without_console_errors(site: Path, browser: Any) -> None:
    with serve(site) as base:
        for path in _pages(site):
            visit = Visit(browser, base, path)
            try:
                assert visit.errors == [], f"{path}: {visit.errors}"
                assert visit.external == [], f"{path} asked the network for {visit.external}"
                assert visit.page.locator("h1").count() >= 1
            finally:
                visit.close()


def test_charts_render(site: Path, browser: Any) -> None:
    drawn = 0
    with serve(site) as base:
        for path in ("memory/", "performance/", "streaming/", "quality/"):
            visit = Visit(browser, base, path)
            try:
                figures = visit.page.locator("figure.chart")
                count = figures.count()
                assert count > 0, path
                visit.page.wait_for_function(
                    f"document.querySelectorAll('figure.chart-live').length === {count}",
                    timeout=15_000,
                )
                for i in range(count):
                    assert figures.nth(i).locator("svg, canvas").count() > 0
                drawn += count
            finally:
                visit.close()
    assert drawn >= 10


def test_hostile_transcripts_show_as_text_and_run_nothing(site: Path, browser: Any) -> None:
    seen = ""
    with serve(site) as base:
        for name in (
            "simple-response",
            "code-generation",
            "technical-explanation",
            "multi-step-problem",
        ):
            visit = Visit(browser, base, f"transcripts/{name}/")
            try:
                visit.page.evaluate(
                    "document.querySelectorAll('details').forEach(d => d.open = true)"
                )
                visit.page.wait_for_timeout(200)
                assert visit.page.evaluate("typeof window.__pwned") == "undefined"
                assert (
                    visit.page.evaluate(
                        "document.querySelectorAll('[onclick], [onerror], [onload]').length"
                    )
                    == 0
                )
                assert visit.dialogs == []
                pre = visit.page.locator("pre.transcript")
                assert pre.locator("script, img").count() == 0
                seen += "\n".join(pre.all_inner_texts())
                assert visit.external == []
            finally:
                visit.close()
    assert "<script>window.__pwned = 1; console.error('xss')</script>" in seen
    assert '<img src=x onerror="window.__pwned = 2">' in seen
    assert "{{ 7 * 7 }}" in seen
    assert '--8<-- "/etc/passwd"' in seen


def test_hosts_side_by_side_and_history_charts(fleet_site: Path, browser: Any) -> None:
    with serve(fleet_site) as base:
        for path in ("", "hardware/", "history/"):
            visit = Visit(browser, base, path)
            try:
                assert visit.errors == [] and visit.external == [], path
                if path == "hardware/":
                    header = visit.page.locator("table").first.locator("th")
                    assert header.count() == 3  # the fact, then one column per host
                    assert "synthetic-gpu-host" in header.all_inner_texts()[1]
                elif path == "":
                    summary = visit.page.locator("table", has_text="Avg Tokens/Sec")
                    assert "Host" in summary.locator("th").all_inner_texts()
                else:
                    figures = visit.page.locator("figure.chart")
                    count = figures.count()
                    assert count == 6  # one per headline metric
                    visit.page.wait_for_function(
                        f"document.querySelectorAll('figure.chart-live').length === {count}",
                        timeout=15_000,
                    )
                    for i in range(count):
                        assert figures.nth(i).locator("svg, canvas").count() > 0
                    assert visit.page.locator("text=fleet-1.6").count() > 0
            finally:
                visit.close()


def test_pages_opened_from_disk_log_no_error(site: Path, browser: Any) -> None:
    """The README says to open site/index.html: under file:// every page logged a CORS error
    for the version selector's versions.json, which an unversioned build no longer asks for."""
    context = browser.new_context()
    try:
        for path in ("index.html", "performance/index.html", "memory/index.html"):
            errors: list[str] = []
            page = context.new_page()
            page.on("console", lambda m, e=errors: e.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda exc, e=errors: e.append(str(exc)))
            page.goto((site / path).as_uri(), wait_until="load")
            page.wait_for_timeout(1500)
            assert errors == [], f"{path}: {errors}"
            assert page.locator("h1").count() >= 1
            page.close()
    finally:
        context.close()
