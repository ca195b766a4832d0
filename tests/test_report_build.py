"""`nox -s build`: a store in, a checked, offline, versioned site out."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import duckdb
import pytest

from common.errors import BuildError
from evidence.store import open_store
from moe_evidence.cli import main
from report.build import BuildResult
from report.pages import PAGES
from report.site import GENERATED_CONFIG
from tests.support.charts import svgs_drawn_afresh
from tests.support.report import build, project, synthetic_store

SNAPSHOT = Path(__file__).parent / "fixtures" / "report" / "snapshot"
UPDATE = os.environ.get("UPDATE_SNAPSHOTS") == "1"


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, BuildResult]:
    tmp = tmp_path_factory.mktemp("quick")
    db = tmp / "quick.duckdb"
    synthetic_store(db)
    root = project(tmp)
    return db, root, build(db, root)


def test_every_page_is_generated_and_built(quick: tuple[Path, Path, BuildResult]) -> None:
    _, root, result = quick
    for page in (p.page for p in PAGES):
        if page == "history.md":
            # One release: no history page, and none in the navigation.
            assert not (root / "docs" / page).exists()
            assert "history.md" not in (root / GENERATED_CONFIG).read_text(encoding="utf-8")
            continue
        assert (root / "docs" / page).is_file()
        html = result.site_dir / (page[:-3].replace("index", "") or "") / "index.html"
        assert html.parent.joinpath("index.html").is_file(), page
    assert len(list((root / "docs" / "transcripts").glob("*.md"))) == 10  # 9 tests + index
    # The store's schema is part of the Data page.
    data = (result.site_dir / "data" / "index.html").read_text(encoding="utf-8")
    assert "schema_migrations" in data and "clock_origin_ns" in data


def test_the_build_writes_the_navigation_it_builds_with(
    quick: tuple[Path, Path, BuildResult],
) -> None:
    # mkdocs.yml plus the navigation of report/pages.py; `publish` hands mike this file.
    import yaml

    from report.pages import nav

    _, root, _ = quick
    config = yaml.safe_load((root / GENERATED_CONFIG).read_text(encoding="utf-8"))
    assert config == {"INHERIT": "mkdocs.yml", "nav": nav(lambda p: p.name != "history")}


def test_the_site_references_no_network_resource(quick: tuple[Path, Path, BuildResult]) -> None:
    _, _, result = quick
    for html in result.site_dir.rglob("*.html"):
        text = html.read_text(encoding="utf-8")
        assert "fonts.googleapis" not in text and "fonts.gstatic" not in text
        assert not re.search(r'<script[^>]+src="(https?:)?//', text), html
        assert not re.search(r'<link[^>]+href="(https?:)?//', text), html
    assert (result.site_dir / "assets" / "vendor" / "vega-bundle.js").stat().st_size > 500_000


def test_charts_have_spec_and_static_svg(quick: tuple[Path, Path, BuildResult]) -> None:
    _, root, _ = quick
    charts = root / "docs" / "assets" / "charts"
    svgs = sorted(p.stem for p in charts.glob("*.svg"))
    assert "perf-ttft_ms" in svgs or "perf-ttft-ms" in svgs
    for name in svgs:
        assert (charts / f"{name}.vl.json").is_file()
        assert (charts / f"{name}.svg").read_text().lstrip().startswith("<svg")


def test_tables_are_exported_as_parquet(quick: tuple[Path, Path, BuildResult]) -> None:
    db, root, _ = quick
    data = root / "docs" / "data"
    with duckdb.connect() as con:
        n = con.execute(f"SELECT count(*) FROM '{data / 'chunks.parquet'}'").fetchone()
        with open_store(db, read_only=True) as store:
            want = store.execute("SELECT count(*) FROM chunks").fetchone()
        assert n == want
        cols = {
            r[0]
            for r in con.execute(
                f"DESCRIBE SELECT * FROM '{data / 'request_metrics.parquet'}'"
            ).fetchall()
        }
    assert {"ttft_ms", "decode_tps", "avg_tps", "e2e_s"} <= cols


def test_hostile_output_is_escaped_in_the_markdown(quick: tuple[Path, Path, BuildResult]) -> None:
    _, root, _ = quick
    text = "".join(p.read_text() for p in (root / "docs" / "transcripts").glob("*.md"))
    assert "<script>" not in text and "<img" not in text and "{{ 7" not in text
    assert "&#60;script&#62;" in text
    html = "".join(p.read_text() for p in (root / "site" / "transcripts").rglob("*.html"))
    assert "<script>window.__pwned" not in html and "&#60;script&#62;window" in html


def _normalise(text: str) -> str:
    # The store file's digest, id and size change with every store written.
    text = re.sub(r"(\| (?:SHA-256|Store id|Size) \| ).*\|", r"\1(varies) |", text)
    text = re.sub(r'(data-chart="[^"]+">)[^<]*(</script>)', r"\1(spec)\2", text)
    return re.sub(r"(\| \d[\d,]* \| )[\d.,]+&nbsp;[KMG]?i?B( \| \[)", r"\1(size)\2", text)


def test_snapshot_of_the_rendered_markdown(quick: tuple[Path, Path, BuildResult]) -> None:
    _, root, _ = quick
    # The methodology page quotes evidence.metrics and scoring verbatim; it is
    # checked against them below rather than frozen here.
    pages = [p.page for p in PAGES if p.page not in ("methodology.md", "history.md")]
    pages.append("transcripts/simple-response.md")
    if UPDATE:
        shutil.rmtree(SNAPSHOT, ignore_errors=True)
    for page in pages:
        got = _normalise((root / "docs" / page).read_text(encoding="utf-8"))
        path = SNAPSHOT / page
        if UPDATE:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(got, encoding="utf-8")
            continue
        assert path.is_file(), f"no snapshot for {page}; run with UPDATE_SNAPSHOTS=1"
        assert got == path.read_text(encoding="utf-8"), (
            f"{page} changed; review, then UPDATE_SNAPSHOTS=1"
        )


def test_methodology_renders_every_metric_definition(
    quick: tuple[Path, Path, BuildResult],
) -> None:
    from evidence.metrics import METRICS

    _, root, _ = quick
    text = (root / "docs" / "methodology.md").read_text(encoding="utf-8")
    for metric in METRICS.values():
        assert f"{{ #metric-{metric.name} }}" in text, metric.name
        assert metric.definition in text, metric.name


def test_same_store_same_site(quick: tuple[Path, Path, BuildResult], tmp_path: Path) -> None:
    # Reproducible: a second build from the same store gives the same bytes, every
    # file of the site (pages, charts, Parquet, search index, sitemap). Its charts are
    # drawn afresh, not taken from what the test run drew before.
    db, _, first = quick
    with svgs_drawn_afresh():
        second = build(db, project(tmp_path))

    def files(site: Path) -> dict[str, bytes]:
        return {
            p.relative_to(site).as_posix(): p.read_bytes() for p in site.rglob("*") if p.is_file()
        }

    one, two = files(first.site_dir), files(second.site_dir)
    assert sorted(one) == sorted(two)
    assert [name for name in one if one[name] != two[name]] == []


def test_the_build_reads_with_one_thread(quick: tuple[Path, Path, BuildResult]) -> None:
    # Regression: DuckDB's parallel aggregation adds partial sums in an order that
    # varies, so a standard deviation over a real store differed in its last bits
    # from one build to the next (request_metrics.parquet, itl_cv; seen on an
    # 80-request campaign and a 2,000-request synthetic store). Timing-dependent, so
    # the mechanism is what is checked: the build's connection runs one thread.
    from report.source import open_evidence

    db, _, _ = quick
    with open_evidence(db) as con:
        assert con.execute("SELECT current_setting('threads')").fetchone() == (1,)


def test_an_empty_store_builds_and_says_so(tmp_path: Path) -> None:
    db = tmp_path / "empty.duckdb"
    with open_store(db):
        pass
    root = project(tmp_path)
    result = build(db, root)
    assert result.campaign_ids == ()
    # Each page of measurements is its title and one line, not a page of empty sections.
    for page in (p.page for p in PAGES):
        if page in ("methodology.md", "history.md"):
            continue
        text = (root / "docs" / page).read_text(encoding="utf-8")
        body = [line for line in text.splitlines() if line.strip() and "built-from" not in line]
        assert body[1].startswith("Nothing to show yet: this evidence store holds no campaign")
        assert len(body) == 3 and body[2] == "`nox -s build` again.", page


def test_a_store_without_scores_or_gpu_builds_and_says_what_is_missing(tmp_path: Path) -> None:
    db = tmp_path / "bare.duckdb"
    synthetic_store(db, scores=False, gates=False, reviews=False, gpu=False)
    root = project(tmp_path)
    build(db, root)
    index = (root / "docs" / "index.md").read_text()
    assert "NO VERDICT" in index
    quality = (root / "docs" / "quality.md").read_text()
    assert "scoring has not run" in quality
    memory = (root / "docs" / "memory.md").read_text()
    assert "no NVIDIA GPU on this host" in memory


@pytest.mark.parametrize(
    ("addition", "message"),
    [
        ("\nThroughput: XX tokens/s\n", r"docs/models\.md:\d+: unresolved placeholder 'XX'"),
        ("\nSaved X.X GB\n", r"docs/models\.md:\d+: unresolved placeholder 'X\.X'"),
        ("\nTODO write this\n", r"docs/models\.md:\d+: unresolved placeholder 'TODO'"),
        ("\n=======\n", r"docs/models\.md:\d+: merge-conflict marker"),
        ("\n{{ none if page.models else 1 }}\n", r"templates/models\.md\.j2:\d+: None"),
        (
            "\n{{ page.models | length / 3 }}\n",
            r"templates/models\.md\.j2:\d+: an unformatted float",
        ),
        ("\n{{ none }}\n", r"docs/models\.md:\d+: missing value printed as a figure 'None'"),
        ("\n{{ no_such_name }}\n", r"templates/models\.md\.j2:\d+: .*no_such_name"),
        # Broken links and anchors are found by mkdocs: those builds run it.
        ("\n[nowhere](nowhere.md)\n", r"docs/models\.md:\d+: .*nowhere\.md"),
        ("\n[bad anchor](memory.md#no-such-section)\n", r"docs/models\.md:\d+: .*no-such-section"),
    ],
)
def test_a_faulty_page_fails_the_build_naming_file_and_line(
    tmp_path: Path, addition: str, message: str
) -> None:
    db = tmp_path / "q.duckdb"
    synthetic_store(db)
    root = project(tmp_path)
    template = root / "templates" / "models.md.j2"
    template.write_text(template.read_text() + addition)
    with pytest.raises(BuildError, match=message):
        build(db, root, run_mkdocs="](" in addition)


def test_cli_reports_errors_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(
        ["build", "--db", str(tmp_path / "missing.duckdb"), "--root", str(project(tmp_path))]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: no evidence store at") and err.count("\n") == 1


def test_unknown_campaign_is_an_error(
    quick: tuple[Path, Path, BuildResult], tmp_path: Path
) -> None:
    db, _, _ = quick
    with pytest.raises(BuildError, match="no campaign nope in this store"):
        build(db, project(tmp_path), campaigns=("nope",), run_mkdocs=False)


def test_the_build_never_imports_the_capture_side() -> None:
    import subprocess
    import sys

    code = (
        "import sys, report, report.build, report.publish; "
        "from report.context import methodology; methodology._scoring_docs(); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'collector'))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_the_layers_import_only_downwards() -> None:
    # capture (collector) -> store (evidence) <- scoring <- report; collect-then-score
    # lives above them all (moe_evidence). Checked on the source, not by convention.
    root = Path(__file__).resolve().parents[1]
    forbidden = {
        "collector": ("scoring", "report", "moe_evidence"),
        "scoring": ("collector", "report", "moe_evidence"),
        "report": ("collector", "moe_evidence"),
        "evidence": ("collector", "scoring", "report", "moe_evidence"),
        "common": ("collector", "evidence", "scoring", "report", "moe_evidence"),
    }
    found = []
    for package, banned in forbidden.items():
        for path in sorted((root / package).rglob("*.py")):
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                words = line.split()
                if len(words) >= 2 and words[0] in ("from", "import"):
                    top = words[1].split(".")[0]
                    if top in banned:
                        found.append(f"{path.relative_to(root)}:{n}: {line.strip()}")
    assert found == []


def test_labels_that_read_like_placeholders_build(tmp_path: Path) -> None:
    """The user's names are text, not figures: a release "TBD", a model "None", a file
    "-inf.gguf" and a right-to-left override in a label. Regression: the hygiene check
    refused "missing value printed as a figure" for each of them."""
    db = tmp_path / "labels.duckdb"
    synthetic_store(db, name="Release TBD (None)")
    with duckdb.connect(str(db)) as con:
        con.execute("UPDATE campaigns SET release_label = 'TBD'")
        con.execute("UPDATE models SET label = 'None\u202eevil', path = '/m/-inf.gguf'")
    root = project(tmp_path)
    build(db, root)
    index = (root / "docs" / "index.md").read_text(encoding="utf-8")
    assert "None\u2039U+202E\u203aevil" in index and "\u202e" not in index


def test_the_quality_page_says_how_the_sandbox_held(tmp_path: Path) -> None:
    """Where a containment layer was missing on the host, the site says the code ran with
    weaker containment (from each check's own record, never assumed)."""
    db = tmp_path / "sandbox.duckdb"
    synthetic_store(db)
    with duckdb.connect(str(db)) as con:
        runs = con.execute(
            "SELECT count(*) FROM scores WHERE name = 'check' "
            "AND json_extract(detail, '$.cases') IS NOT NULL"
        ).fetchone()
        assert runs is not None and runs[0] > 0
        con.execute(
            """
            UPDATE scores SET detail = json_merge_patch(detail, '{"isolation": {
                "filesystem": "host-as-nobody", "user": "nobody (uid 65534)",
                "network": "network-namespace", "mechanisms": ["uid-nobody"],
                "missing": ["mount-namespace", "fresh-proc"]}}')
            WHERE name = 'check' AND json_extract(detail, '$.cases') IS NOT NULL
            """
        )
    root = project(tmp_path)
    build(db, root)
    page = (root / "docs" / "quality.md").read_text(encoding="utf-8")
    assert f"- {runs[0]} run{'s' if runs[0] > 1 else ''}: filesystem host-as-nobody" in page
    assert "**weaker containment**: this host could not give mount-namespace, fresh-proc" in page


def test_the_settings_each_server_reported_are_shown_per_run(tmp_path: Path) -> None:
    """Context, batch, threads, flash attention, KV type and --fit, from each run's log."""
    db = tmp_path / "settings.duckdb"
    synthetic_store(db)
    settings = {
        "n_ctx": "2048",
        "n_batch": "2048",
        "n_ubatch": "512",
        "flash_attn": "auto",
        "threads": "1",
        "threads_batch": "1",
        "kv_type_k": "q8_0",
        "kv_type_v": "f16",
    }
    with duckdb.connect(str(db)) as con:
        con.execute(
            "UPDATE server_runs SET log_summary = json_merge_patch(coalesce(log_summary, '{}'), "
            "?::JSON)",
            [json.dumps({"settings": settings, "fit_lines": ["no changes needed"]})],
        )
    root = project(tmp_path)
    build(db, root)
    page = (root / "docs" / "hardware.md").read_text(encoding="utf-8")
    assert "| 2048 | 2048 / 512 | 1 (1) | auto | q8&#95;0 / f16 |" in page
    assert '<span class="untrusted">ran: no changes needed</span>' in page
