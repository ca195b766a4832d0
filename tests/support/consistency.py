"""What every page of a built site must agree on with the store and with itself: no
interval below its minimum N, one VRAM-saved figure per configuration (the store's),
gap counts equal to the raw chunks'. `check_site` runs them all."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import duckdb

from evidence.metrics import create_views
from evidence.statistics import MIN_N_FOR_INTERVAL
from report.build import BuildResult

NBSP = "&nbsp;"
N_IN_CELL = re.compile(r"N(?:&nbsp;| )=(?:&nbsp;| )(\d+)")
INTERVAL_MARKS = ("±", "CI ", "CI&nbsp;")
PERCENT = re.compile(r"(-?\d+(?:\.\d+)?)(?:&nbsp;| )?%")


@dataclass(frozen=True)
class Table:
    page: str
    line: int
    header: list[str]
    rows: list[list[str]]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _plain(cell: str) -> str:
    return re.sub(r"<[^>]+>|\*\*", "", cell).replace(NBSP, " ").strip()


def tables(docs: Path) -> list[Table]:
    """Every pipe table of every generated page, with the heading line above it."""
    found = []
    for page in sorted(docs.rglob("*.md")):
        lines = page.read_text(encoding="utf-8").splitlines()
        i = 0
        while i < len(lines) - 1:
            if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1]):
                header = [_plain(c) for c in _cells(lines[i])]
                body = []
                j = i + 2
                while j < len(lines) and lines[j].startswith("|"):
                    body.append(_cells(lines[j]))
                    j += 1
                found.append(Table(str(page.relative_to(docs)), i + 1, header, body))
                i = j
            else:
                i += 1
    return found


def _column(table: Table, *names: str) -> int | None:
    for k, title in enumerate(table.header):
        if title in names:
            return k
    return None


def intervals_below_min_n(docs: Path) -> list[str]:
    """Cells that print a spread or an interval for fewer than MIN_N_FOR_INTERVAL requests."""
    bad = []
    for t in tables(docs):
        n_col = _column(t, "N", "Pairs")
        for row in t.rows:
            n_here = row[n_col].replace(",", "") if n_col is not None else ""
            few = n_here.isdigit() and int(n_here) < MIN_N_FOR_INTERVAL
            for k, cell in enumerate(row):
                title = t.header[k] if k < len(t.header) else ""
                spread_column = title in ("SD", "95 % CI") and re.search(r"\d", cell)
                shows_spread = spread_column or any(m in cell for m in INTERVAL_MARKS)
                counts = [int(n) for n in N_IN_CELL.findall(cell)]
                few_here = few or (bool(counts) and min(counts) < MIN_N_FOR_INTERVAL)
                if few_here and shows_spread and "too few" not in cell:
                    bad.append(f"{t.page}:{t.line}: {' | '.join(row)[:160]}")
                    break
    return bad


def chart_intervals_below_min_n(site: Path) -> list[str]:
    """Chart data points that draw an error bar for fewer than MIN_N_FOR_INTERVAL requests."""
    bad = []
    for spec_file in sorted(site.rglob("*.vl.json")):
        spec = json.loads(spec_file.read_text(encoding="utf-8"))
        for name, data in (spec.get("datasets") or {}).items():
            for point in data:
                if not isinstance(point, dict) or "n" not in point:
                    continue
                drawn = point.get("lo") is not None or point.get("hi") is not None
                if drawn and int(point["n"]) < MIN_N_FOR_INTERVAL:
                    bad.append(f"{spec_file.name} {name}: {point}")
    return bad


def vram_saved_on_pages(docs: Path) -> dict[tuple[str, str], set[float]]:
    """Every VRAM-saved percentage the pages print, keyed by (model, configuration)."""
    shown: dict[tuple[str, str], set[float]] = {}

    def add(model: str, config: str, cell: str) -> None:
        found = PERCENT.search(cell)
        if found:
            key = (_plain(model), _plain(config).split(" ")[0].strip("`"))
            shown.setdefault(key, set()).add(float(found.group(1)))

    for t in tables(docs):
        saved = _column(t, "VRAM saved", "VRAM Saved")
        model = _column(t, "Model")
        config = _column(t, "Configuration", "Offload")
        if saved is not None and model is not None and config is not None:
            for row in t.rows:
                add(row[model], row[config], row[saved])
    # The answer block: a two-column table under "### MODEL: `OFFLOAD` against `BASELINE`".
    for page in docs.rglob("*.md"):
        heading = None
        for line in page.read_text(encoding="utf-8").splitlines():
            found = re.match(r"### (.+?): `([^`]+)` against `[^`]+`", line)
            if found:
                heading = found.groups()
            elif heading and line.startswith("| **VRAM saved**"):
                add(heading[0], heading[1], _cells(line)[1])
    return shown


def vram_saved_in_store(db: Path) -> dict[tuple[str, str], float]:
    with duckdb.connect(str(db), read_only=True) as con:
        create_views(con)
        found = con.execute(
            "SELECT m.label, v.config_label, v.vram_saved_pct FROM vram_saved v "
            "JOIN models m USING (model_id) WHERE v.vram_saved_pct IS NOT NULL"
        ).fetchall()
    return {(str(m), str(c)): float(p) for m, c, p in found}


def gaps_from_raw_chunks(db: Path) -> dict[tuple[str, str], tuple[int, int]]:
    """(content events, gaps) per (model, configuration), recounted from the chunks table
    itself: successful streamed requests, events whose text is not empty. The population
    is the headline's: requests other processes starved are left out (the registry's
    `in_headline`; on a loaded machine a quick campaign has some)."""
    with duckdb.connect(str(db), read_only=True) as con:
        create_views(con)
        found = con.execute(
            """
            WITH per AS (
                SELECT r.request_id, count(c.seq) AS events
                FROM requests r
                JOIN request_metrics rm ON rm.request_id = r.request_id AND rm.in_headline
                LEFT JOIN chunks c ON c.request_id = r.request_id
                     AND c.kind = 'content' AND c.text <> ''
                WHERE r.stream AND r.status = 'ok' AND r.finish_reason IN ('stop', 'length')
                GROUP BY r.request_id
            )
            SELECT m.label, s.config_label, sum(per.events),
                   sum(CASE WHEN per.events > 0 THEN per.events - 1 ELSE 0 END)
            FROM per JOIN requests r USING (request_id)
            JOIN server_runs s USING (server_run_id) JOIN models m USING (model_id)
            GROUP BY 1, 2
            """
        ).fetchall()
    return {(str(m), str(c)): (int(e), int(g)) for m, c, e, g in found}


def gaps_on_pages(docs: Path) -> dict[tuple[str, str, str], int]:
    shown = {}
    for t in tables(docs):
        gaps = _column(t, "Gaps")
        model, config = _column(t, "Model"), _column(t, "Configuration")
        if gaps is None or model is None or config is None:
            continue
        events = _column(t, "Content events")
        for row in t.rows:
            key = (_plain(row[model]), _plain(row[config]))
            shown[(t.page, *key)] = int(_plain(row[gaps]).replace(",", ""))
            if events is not None:
                shown[(t.page + "#events", *key)] = int(_plain(row[events]).replace(",", ""))
    return shown


def check_site(db: Path, root: Path, result: BuildResult) -> None:
    docs = root / "docs"
    assert intervals_below_min_n(docs) == []
    assert chart_intervals_below_min_n(result.site_dir) == []

    store = vram_saved_in_store(db)
    shown = vram_saved_on_pages(docs)
    assert shown, "no page shows a VRAM-saved figure"
    for key, values in shown.items():
        assert len(values) == 1, f"{key}: the pages disagree: {sorted(values)}"
        assert key in store, f"{key}: shown but not in the store's vram_saved view"
        assert abs(values.pop() - store[key]) < 0.051, key

    raw = gaps_from_raw_chunks(db)
    pages = gaps_on_pages(docs)
    gap_tables = {page for page, *_ in pages if not page.endswith("#events")}
    assert {"performance.md", "streaming.md"} <= gap_tables
    for (page, model, config), value in pages.items():
        events, gaps = raw[(model, config)]
        expected = events if page.endswith("#events") else gaps
        assert value == expected, f"{page} {model} {config}: {value} != {expected}"
