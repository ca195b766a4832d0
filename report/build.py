"""The build: evidence store -> page contexts -> Markdown + charts + Parquet -> site.

    open the source read-only (a store file, or a fleet directory of Parquet
    bundles read in place: report.source)
      -> select campaigns, create the metric views and TEMP working tables
      -> Parquet exports
      -> one context per page declared in report/pages.py (SQL; nothing loops over
         chunks in Python)
      -> each page's charts (Altair specs, static SVGs)
      -> templates/*.md.j2 rendered into docs/ (the generated page set)
      -> hygiene check of every generated page
      -> the navigation, from the same declarations, into mkdocs.generated.yml
      -> mkdocs build --strict into site/, then an offline check

The result depends on the store alone: no clock, no network, no capture code.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from common.errors import BuildError
from common.files import file_sha256
from evidence.bundle import MANIFEST, find_bundles
from report import charts as charts_mod
from report import hygiene, site, vendor
from report.context import quality
from report.export import export_tables
from report.machine_paths import build_machine_paths
from report.pages import PAGES, PageInputs, nav
from report.queries import Selection, prepare, rows, select_campaigns
from report.render import chart_markup, environment, render_page
from report.source import open_evidence

# The generated part of docs/: the pages of report/pages.py and the asset folders
# below. The build deletes and rewrites all of it; everything else in docs/ is
# hand-written.
# Pages earlier versions generated: a checkout that built them still has them, and
# mkdocs would refuse them as pages outside the nav.
RETIRED_PAGES = ("inventory.md", "hosts.md")
TRANSCRIPT_TEMPLATE = "transcripts.md.j2"
# With no campaign, a page of measurements is one line saying so (EMPTY_TEMPLATE), not a
# page of empty sections (a page declared `whole_when_empty` explains the tool instead).
EMPTY_TEMPLATE = "empty.md.j2"
GENERATED_DIRS = ("transcripts", "assets/charts", "assets/vendor", "data")
CHART_DIR = "assets/charts"


@dataclass(frozen=True)
class BuildOptions:
    """What to build: the source (a store file or a fleet directory of bundles),
    its campaigns (default: the latest; `all_campaigns`: every complete one),
    and where."""

    db: Path
    campaigns: tuple[str, ...] = ()
    all_campaigns: bool = False
    root: Path = Path(".")
    site_dir: Path | None = None
    version: str | None = None  # set when publishing; shown on every page
    run_mkdocs: bool = True
    # Count requests other processes starved in the headline figures and gates
    # (by default they are left out, and counted beside the headline).
    include_starved: bool = False


@dataclass
class BuildResult:
    """What a build produced: the campaigns shown, the pages, the site, step timings."""

    campaign_ids: tuple[str, ...]
    pages: list[Path]
    site_dir: Path
    timings: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SiteInfo:
    """Facts every page shows: what it was built from."""

    selection: Selection
    store_name: str
    version: str | None
    empty_reason: str | None
    fleet: bool = False  # built from a directory of bundles, not a store file


@dataclass(frozen=True)
class SourceFacts:
    """The identity of what a site was built from: one digest over its bytes."""

    name: str
    sha256: str
    size: int
    bundles: int  # 0 for a store file


def source_facts(path: Path) -> SourceFacts:
    """A store file's digest and size; for a fleet directory, a digest over every
    bundle's relative path and manifest (which holds each Parquet file's sha256,
    verified when the directory is opened) and the bundles' total size."""
    if not path.is_dir():
        return SourceFacts(path.name, file_sha256(path), path.stat().st_size, 0)
    digest = hashlib.sha256()
    size = 0
    bundles = find_bundles(path)
    for bundle in bundles:
        digest.update(bundle.relative_to(path).as_posix().encode() + b"\0")
        digest.update((bundle / MANIFEST).read_bytes() + b"\0")
        size += sum(f.stat().st_size for f in bundle.iterdir() if f.is_file())
    return SourceFacts(path.name, digest.hexdigest(), size, len(bundles))


@dataclass(frozen=True)
class EmptyPage:
    title: str


def _title(template: Path) -> str:
    """The page title: the template's first `# ` heading (one place states it)."""
    for line in template.read_text(encoding="utf-8").splitlines():
        if line.startswith("# "):
            return line[2:].strip()
    raise BuildError(f"{template.name} has no '# ' title")


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self._t = time.perf_counter()

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)


def clean_generated(docs: Path) -> None:
    """Remove the generated page set, so no page of an earlier build survives."""
    for page in (*(p.page for p in PAGES), *RETIRED_PAGES):
        (docs / page).unlink(missing_ok=True)
    for folder in GENERATED_DIRS:
        shutil.rmtree(docs / folder, ignore_errors=True)


def stage_project(source: Path, dest: Path) -> Path:
    """Copy what a build needs (mkdocs.yml, templates/, the hand-written part of
    docs/) into `dest`, so a site can be built without touching `source`."""
    source = source.resolve()
    _check_project(source)
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "mkdocs.yml", dest / "mkdocs.yml")
    shutil.copytree(source / "templates", dest / "templates", dirs_exist_ok=True)
    shutil.copytree(source / "docs", dest / "docs", dirs_exist_ok=True)
    clean_generated(dest / "docs")
    return dest


def _check_project(root: Path) -> None:
    for needed in ("mkdocs.yml", "templates", "docs"):
        if not (root / needed).exists():
            raise BuildError(
                f"{root / needed} not found; run the build from the project root "
                "(where mkdocs.yml is) or pass --root"
            )


def _user_texts(con: duckdb.DuckDBPyConnection) -> list[str]:
    """The texts the user chose (labels, names, the model's file name and its own name, the
    host's CPU): shown as given, so exempt from the hygiene check's placeholder rules."""
    found = rows(
        con,
        """
        SELECT name AS t FROM campaigns UNION SELECT release_label FROM campaigns
        UNION SELECT label FROM models UNION SELECT name FROM models
        UNION SELECT regexp_extract(path, '[^/\\\\]+$') FROM models
        UNION SELECT config_label FROM server_runs UNION SELECT version FROM server_runs
        UNION SELECT test_id FROM tests UNION SELECT cpu_model FROM hosts
        """,
    )
    return sorted(str(r["t"]) for r in found if r["t"])


def build_site(options: BuildOptions) -> BuildResult:
    """Build the whitepaper site from the evidence store (see the module docstring)."""
    root = options.root.resolve()
    _check_project(root)
    docs = root / "docs"
    site_dir = (options.site_dir or root / "site").resolve()
    timer = _Timer()
    with timer.step("vega bundle (start)"):
        bundle = vendor.start_bundle(charts_mod.vega_lite_version())
    with open_evidence(options.db) as con:
        # Only once the store opened: a store refused (damaged, locked) leaves the pages
        # of the last good build in place.
        clean_generated(docs)
        facts = source_facts(options.db)
        with timer.step("select + views"):
            sel = select_campaigns(con, options.campaigns, options.all_campaigns)
            prepare(con, sel, options.include_starved)
        with timer.step("parquet"):
            exports = export_tables(con, docs)
        with timer.step("contexts"):
            inputs = PageInputs(con, sel, facts, exports)
            contexts = {p.name: inputs.context(p.name) for p in PAGES}
            # Every configuration that started a server: one that did not fit the device
            # has no request but is still drawn (its estimated memory).
            configs = [
                r["config_label"]
                for r in rows(
                    con,
                    "SELECT config_label, min(config_order) o FROM sel_runs "
                    "GROUP BY 1 ORDER BY o, 1",
                )
            ]
            tests = [
                r["test_id"]
                for r in rows(
                    con,
                    "SELECT test_id, min(test_order) o FROM sel_requests GROUP BY 1 ORDER BY o, 1",
                )
            ]
            users = _user_texts(con)
        with timer.step("transcripts"):
            transcripts = quality.transcript_pages(con)
    with timer.step("charts"):
        charts = charts_mod.merge_charts(
            (p.name, p.charts(contexts[p.name], configs, tests)) for p in PAGES if p.charts
        )
        charts_mod.write_charts(charts, docs / CHART_DIR, charts_mod.vega_lite_version())
    info = SiteInfo(
        selection=sel,
        store_name=facts.name,
        version=options.version,
        empty_reason=None if not sel.empty else "this evidence store holds no campaign yet",
        fleet=facts.bundles > 0,
    )
    env = environment(root / "templates")
    shown = [p for p in PAGES if p.shown(contexts[p.name])]
    written: list[Path] = []
    with timer.step("render"):
        for p in shown:
            prefix = "../" * p.page.count("/")
            empty = sel.empty and not p.whole_when_empty
            written.append(
                render_page(
                    env,
                    EMPTY_TEMPLATE if empty else p.template,
                    docs / p.page,
                    {
                        "page": EmptyPage(_title(root / "templates" / p.template))
                        if empty
                        else contexts[p.name],
                        "site": info,
                        "chart": lambda chart_id, pre=prefix: chart_markup(charts, chart_id, pre),
                    },
                )
            )
        for t in transcripts:
            written.append(
                render_page(
                    env,
                    TRANSCRIPT_TEMPLATE,
                    docs / "transcripts" / f"{t.slug}.md",
                    {"page": t, "site": info},
                )
            )
    with timer.step("hygiene"):
        machine = build_machine_paths(root, options.db.parent, Path(__file__).resolve().parents[1])
        hygiene.check_pages(written, root, machine, users)
    with timer.step("vega bundle (wait)"):
        vendor.write_bundle(bundle, docs / "assets" / "vendor")
    config = site.write_config(root, nav(lambda p: p in shown))
    if options.run_mkdocs:
        with timer.step("mkdocs"):
            site.mkdocs_build(config, site_dir, versioned=options.version is not None)
        with timer.step("offline check"):
            site.check_offline(site_dir)
            if options.version is not None:
                site.write_local_versions(site_dir, options.version)
    return BuildResult(tuple(sel.ids), written, site_dir, timer.timings)
