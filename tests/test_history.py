"""The history page: one value per release with its CI, and a flag where a
change is larger than the intervals allow. Hand-made stores with chosen
timings, so the expected verdicts are known."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from collector.protocol import PROTOCOL
from common.errors import BuildError
from evidence.bundle import export_bundle
from evidence.statistics import summarize
from evidence.store import open_store
from evidence.writer import insert_row
from moe_evidence.cli import main
from report.build import BuildResult
from report.context.history import Release, judge
from report.values import Stat
from tests.support.report import build, project
from tests.support.stores import MS, StoreFactory

# Per-token gaps (ms) of the repeats: cpu-moe decodes at ~100 tokens/s in
# 1.6.0 and at ~50 in 1.7.0; the baseline is the same in both releases.
RELEASES = {
    "1.6.0": {"baseline": (5.0, 5.1, 4.9, 5.0), "cpu-moe": (10.0, 10.4, 9.6, 10.1)},
    "1.7.0": {"baseline": (5.0, 5.1, 4.9, 5.0), "cpu-moe": (20.0, 20.6, 19.5, 20.2)},
}
TOKENS = 12


def _campaign(con: object, release: str | None, gaps: dict[str, tuple[float, ...]]) -> str:
    f = StoreFactory(con, host_id="host-history").campaign()  # type: ignore[arg-type]
    f.con.execute(
        "UPDATE campaigns SET release_label = ?, name = ? WHERE campaign_id = ?",
        [release, f"history {release or 'unlabelled'}", f.campaign_id],
    )
    test = PROTOCOL.tests[0]
    insert_row(
        f.con,
        "tests",
        {
            "campaign_id": f.campaign_id,
            "test_id": test.test_id,
            "ordinal": test.ordinal,
            "category": test.category,
            "prompt": test.prompt,
            "max_tokens": 50,
            "protocol_max_tokens": test.max_tokens,
            "success_criteria": test.success_criteria,
        },
    )
    for label, per_repeat in gaps.items():
        f.server_run(label, n_cpu_moe=-1 if label == "cpu-moe" else None)
        for repeat, gap in enumerate(per_repeat, 1):
            first = 50 * MS
            chunks = [(first + int(i * gap * MS), f" w{i}") for i in range(TOKENS)]
            f.request(label, chunks, repeat=repeat, usage_tokens=TOKENS)
    return f.campaign_id


def _store(path: Path, releases: dict[str, dict[str, tuple[float, ...]]]) -> list[str]:
    with open_store(path) as con:
        return [_campaign(con, release, gaps) for release, gaps in releases.items()]


@pytest.fixture(scope="module")
def two_releases(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, BuildResult]:
    tmp = tmp_path_factory.mktemp("history")
    db = tmp / "history.duckdb"
    ids = _store(db, RELEASES)
    root = project(tmp)
    return root, build(db, root, campaigns=tuple(ids))


def _section(page: str, heading: str) -> str:
    start = page.index(f"## {heading}")
    end = page.find("\n## ", start + 1)
    return page[start : end if end > 0 else None]


def test_history_shows_each_release_with_n_and_ci(two_releases: tuple[Path, BuildResult]) -> None:
    root, _ = two_releases
    page = (root / "docs" / "history.md").read_text(encoding="utf-8")
    releases = _section(page, "Releases")
    assert "<strong>1.6.0</strong>" in releases and "<strong>1.7.0</strong>" in releases
    assert "History needs two releases" not in page
    decode = _section(page, "Decode tokens/s")
    rows = [line for line in decode.splitlines() if line.startswith("| m | cpu-moe |")]
    assert len(rows) == 2
    for row in rows:
        cells = [c.strip() for c in row.split("|")]
        assert cells[4] == "4"  # N requests
        assert "tokens/s" in cells[5] and "&nbsp;–&nbsp;" in cells[6]  # mean, 95 % CI


def test_a_change_beyond_the_cis_is_flagged_and_the_rule_named(
    two_releases: tuple[Path, BuildResult],
) -> None:
    root, result = two_releases
    page = (root / "docs" / "history.md").read_text(encoding="utf-8")
    assert "95&nbsp;%\nconfidence intervals of the mean do not overlap" in page
    flagged = _section(page, "Flagged changes")
    decode = [line for line in flagged.splitlines() if "Decode tokens/s" in line]
    assert len(decode) == 1
    assert "| m | cpu-moe |" in decode[0] and "change-regression" in decode[0]
    assert "regression</span>" not in flagged.split("Decode")[0]
    # The unchanged baseline is within the intervals, never flagged.
    baseline = [
        line
        for line in _section(page, "Decode tokens/s").splitlines()
        if line.startswith("| m | baseline |") and "1.7.0" in line
    ]
    assert len(baseline) == 1 and "within the intervals" in baseline[0]
    assert not any("| m | baseline |" in line for line in flagged.splitlines())
    # The chart of each metric, with the flag drawn in it.
    svg = root / "docs" / "assets" / "charts" / "history-decode_tps.svg"
    assert svg.is_file() and "regression" in svg.read_text(encoding="utf-8")
    html = (result.site_dir / "history" / "index.html").read_text(encoding="utf-8")
    assert "change-regression" in html and 'id="history-decode_tps"' in html


def test_one_release_has_no_history_page(tmp_path: Path) -> None:
    db = tmp_path / "one.duckdb"
    ids = _store(db, {"1.7.0": RELEASES["1.7.0"]})
    root = project(tmp_path)
    build(db, root, campaigns=tuple(ids), run_mkdocs=False)
    # One release has no history: no page, and no empty page in the navigation.
    assert not (root / "docs" / "history.md").exists()


def test_an_unlabelled_campaign_stands_alone_named_by_its_start(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "unlabelled.duckdb"
    with open_store(db) as con:
        ids = [_campaign(con, "1.6.0", RELEASES["1.6.0"]), _campaign(con, None, RELEASES["1.7.0"])]
    root = project(tmp_path)
    assert main(["build", "--db", str(db), "--all-campaigns", "--root", str(root)]) == 0
    assert ", ".join(ids) in capsys.readouterr().out
    page = (root / "docs" / "history.md").read_text(encoding="utf-8")
    assert "<em>unlabelled, started " in page and " UTC</em>" in page
    assert "change-regression" in _section(page, "Flagged changes")


def _stat(values: list[float]) -> Stat:
    import statistics

    s = summarize(
        len(values),
        statistics.fmean(values),
        statistics.stdev(values) if len(values) > 1 else None,
        min(values),
        max(values),
    )
    return Stat.of(s, "ms")


@pytest.mark.parametrize(
    ("before", "after", "higher_is_better", "verdict", "higher"),
    [
        ([10, 11, 10.5], [20, 21, 20.5], True, "improvement", True),
        ([10, 11, 10.5], [20, 21, 20.5], False, "regression", True),
        ([20, 21, 20.5], [10, 11, 10.5], False, "improvement", False),
        ([10, 14, 12], [12, 16, 13], True, "within", None),
        ([10], [20, 21], True, "not judged", None),
    ],
)
def test_the_decision_rule(
    before: list[float],
    after: list[float],
    higher_is_better: bool,
    verdict: str,
    higher: bool | None,
) -> None:
    from datetime import UTC, datetime

    since = Release("release 1", "1", datetime(2025, 1, 1, tzinfo=UTC), 1, 1, 0)
    change = judge(_stat(before), _stat(after), higher_is_better, since)
    assert (change.verdict, change.higher) == (verdict, higher)
    assert change.previous is since


def test_the_same_history_from_a_fleet_directory_one_bundle_per_release(
    tmp_path: Path, two_releases: tuple[Path, BuildResult]
) -> None:
    fleet = tmp_path / "fleet"
    for release, gaps in RELEASES.items():
        db = tmp_path / f"{release}.duckdb"
        _store(db, {release: gaps})
        with open_store(db, read_only=True) as con:
            export_bundle(con, fleet / "host=host-history" / f"release={release}", str(db))
    root = project(tmp_path)
    build(fleet, root, all_campaigns=True, run_mkdocs=False)
    # Both bundles carry the host's row: it is still one host, joined once.
    hosts = (root / "docs" / "hardware.md").read_text(encoding="utf-8")
    assert "All shown campaigns ran on **one host**" in hosts
    page = (root / "docs" / "history.md").read_text(encoding="utf-8")
    merged = (two_releases[0] / "docs" / "history.md").read_text(encoding="utf-8")
    assert _section(page, "Flagged changes") == _section(merged, "Flagged changes")
    assert _section(page, "Decode tokens/s").count("| 4 |") == 4

    # A campaign in two bundles would count twice: the build says so and what to do.
    copy = fleet / "host=host-history" / "copy"
    shutil.copytree(fleet / "host=host-history" / "release=1.7.0", copy)
    with pytest.raises(BuildError, match=r"is in 2 bundles under .*moe-evidence import"):
        build(fleet, project(tmp_path / "again"), all_campaigns=True, run_mkdocs=False)
