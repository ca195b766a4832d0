"""SQL plumbing shared by the page contexts: the selection's working tables and
the one way a metric is summarised per group.

`prepare` materialises, once per build, what every page reads: the metric
views of `evidence.metrics` restricted to the chosen campaigns. All of it is
TEMP, so it works on the read-only connection and leaves the store untouched.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, TypeVar

import duckdb

from common.errors import BuildError
from evidence.metrics import METRICS, PROBE_CATEGORY, Metric, create_views
from evidence.statistics import aggregate_sql, summarize
from report.values import Stat
from scoring.gates import evaluate_gates

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

_Record = TypeVar("_Record", bound="DataclassInstance")

# Configuration order on every page: the baseline, full offload, then the
# --n-cpu-moe sweep by K.
CONFIG_ORDER_SQL = (
    "CASE WHEN n_cpu_moe IS NULL THEN 0 WHEN n_cpu_moe = -1 THEN 1 ELSE 2 + n_cpu_moe END"
)


def ok_streamed(alias: str = "") -> str:
    """SQL for "a successful streamed request in the headline" (completed, and not
    starved by other processes unless the build includes them: `in_headline`), the
    population of the performance figures."""
    prefix = f"{alias}." if alias else ""
    return f"{prefix}stream AND {prefix}in_headline"


OK_STREAMED = ok_streamed()


@dataclass(frozen=True)
class Campaign:
    """The facts of one selected campaign that every page shows."""

    campaign_id: str
    name: str
    release_label: str | None
    profile: str
    protocol_version: str
    status: str
    started_utc: datetime
    finished_utc: datetime | None
    repeats: int
    host_id: str


@dataclass(frozen=True)
class Selection:
    """The campaigns a site shows, in the order given (or the chosen default)."""

    campaigns: tuple[Campaign, ...]

    @property
    def ids(self) -> list[str]:
        return [c.campaign_id for c in self.campaigns]

    @property
    def empty(self) -> bool:
        return not self.campaigns

    @property
    def multiple(self) -> bool:
        return len(self.campaigns) > 1


def metric(name: str) -> Metric:
    """The metric `name` from `evidence.metrics`, or a BuildError naming it."""
    try:
        return METRICS[name]
    except KeyError:
        raise BuildError(
            f"evidence.metrics defines no metric {name!r}; the report needs it "
            f"(known: {', '.join(sorted(METRICS))})"
        ) from None


def rows(
    con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()
) -> list[dict[str, Any]]:
    """The result of `sql` as a list of dicts keyed by column name."""
    cur = con.execute(sql, list(params))
    names = [d[0] for d in cur.description or ()]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


# The field types a column's value is converted to: DuckDB hands back a count as
# an int but a sum as HUGEINT, a flag as 0/1, an average as a Decimal, and a page
# must not print them differently. A field of any other type takes the value as is.
_CONVERSIONS: dict[str, Callable[[Any], Any]] = {"int": int, "float": float, "bool": bool}


@functools.cache
def _conversions(cls: type[DataclassInstance]) -> dict[str, Callable[[Any], Any] | None]:
    """Each field of `cls` and the conversion its declared type asks for (`int`,
    `float`, `bool`, or one of them or None); the modules use postponed annotations,
    so a field's type is its text."""
    out: dict[str, Callable[[Any], Any] | None] = {}
    for f in dataclasses.fields(cls):
        text = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        kinds = {part.strip() for part in text.split("|")} - {"None"}
        out[f.name] = _CONVERSIONS.get(kinds.pop()) if len(kinds) == 1 else None
    return out


def record(cls: type[_Record], row: Mapping[str, Any], /, **given: Any) -> _Record:
    """A `cls` dataclass from one row of `rows`: each field not `given` is the column
    of its name (a missing one is a KeyError naming it), converted to the field's
    type where `_CONVERSIONS` says; NULL stays None."""
    values = dict(given)
    for name, convert in _conversions(cls).items():
        if name not in values:
            value = row[name]
            values[name] = value if convert is None or value is None else convert(value)
    return cls(**values)


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] = ()) -> Any:
    """The first column of the first row of `sql` (None when there is no row)."""
    row = con.execute(sql, list(params)).fetchone()
    return None if row is None else row[0]


def select_campaigns(
    con: duckdb.DuckDBPyConnection, requested: Sequence[str], every: bool = False
) -> Selection:
    """The campaigns named; with `every`, every complete campaign (else every one),
    oldest first; otherwise the latest with a successful request, complete ones first
    (else the latest complete one, else the latest of any)."""
    cols = (
        "campaign_id, name, release_label, profile, protocol_version, status, started_utc, "
        "finished_utc, repeats, host_id"
    )
    if every and not requested:
        every_row = con.execute(
            f"SELECT {cols} FROM campaigns WHERE status = 'complete' OR NOT EXISTS "
            "(SELECT 1 FROM campaigns WHERE status = 'complete') "
            "ORDER BY started_utc, campaign_id"
        ).fetchall()
        return Selection(tuple(Campaign(*row) for row in every_row))
    if requested:
        found = []
        for campaign_id in requested:
            row = con.execute(
                f"SELECT {cols} FROM campaigns WHERE campaign_id = ?", [campaign_id]
            ).fetchone()
            if row is None:
                raise BuildError(
                    f"no campaign {campaign_id} in this store; list them with "
                    f"`moe-evidence campaigns` or omit --campaign for the latest"
                )
            found.append(Campaign(*row))
        return Selection(tuple(found))
    # A campaign without one successful request (a server that never answered, a
    # launch that failed) holds no evidence: it must never hide an earlier one that
    # does, whatever its status. Among those with evidence, complete ones first.
    row = con.execute(
        f"""
        SELECT {cols} FROM campaigns c
        ORDER BY EXISTS (SELECT 1 FROM requests r
                         WHERE r.campaign_id = c.campaign_id AND r.status = 'ok') DESC,
                 status = 'complete' DESC, started_utc DESC
        LIMIT 1"""
    ).fetchone()
    return Selection((Campaign(*row),) if row else ())


def prepare(
    con: duckdb.DuckDBPyConnection, selection: Selection, include_starved: bool = False
) -> None:
    """Create the metric views and this build's TEMP working tables; with
    `include_starved`, requests starved by other processes count in the headline
    figures and the gates are evaluated again over them (`sel_gates`)."""
    con.execute("SET enable_progress_bar = false")
    # The build only reads: its request figures are computed once (views_sql).
    create_views(con, include_starved, frozen=True)
    con.execute("CREATE OR REPLACE TEMP TABLE sel_campaigns (campaign_id VARCHAR)")
    if selection.ids:
        con.executemany("INSERT INTO sel_campaigns VALUES (?)", [[i] for i in selection.ids])
    multiple = "TRUE" if selection.multiple else "FALSE"
    con.execute(
        f"""
        -- With several campaigns a model is named after its campaign too; campaigns
        -- that share a name (the same config run on several hosts) add a short id.
        CREATE OR REPLACE TEMP TABLE sel_campaign_names AS
        SELECT campaign_id, host_id, release_label,
               CASE WHEN count(*) OVER (PARTITION BY name) > 1
                    THEN name || ', ' || left(campaign_id, 8) ELSE name END AS tag
        FROM campaigns WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns);

        CREATE OR REPLACE TEMP TABLE sel_models AS
        SELECT m.*, c.name AS campaign_name, n.host_id,
               CASE WHEN {multiple} THEN m.label || ' (' || n.tag || ')' ELSE m.label END
                   AS display,
               row_number() OVER (ORDER BY sel_pos.pos,
                   (SELECT min(s.started_utc) FROM server_runs s WHERE s.model_id = m.model_id),
                   m.label) AS model_order
        FROM models m
        JOIN campaigns c USING (campaign_id)
        JOIN sel_campaign_names n USING (campaign_id)
        JOIN (SELECT campaign_id, row_number() OVER () AS pos FROM sel_campaigns) sel_pos
            USING (campaign_id);

        CREATE OR REPLACE TEMP TABLE sel_runs AS
        SELECT s.*, m.display AS model, m.model_order, {CONFIG_ORDER_SQL} AS config_order,
               row_number() OVER (PARTITION BY s.model_id, s.config_label
                                  ORDER BY s.ready_ns IS NULL, s.started_utc) AS attempt
        FROM server_runs s JOIN sel_models m USING (model_id);

        CREATE OR REPLACE TEMP TABLE sel_requests AS
        SELECT r.*, m.display AS model, m.model_order, {CONFIG_ORDER_SQL} AS config_order,
               t.ordinal AS test_order, t.category
        FROM request_metrics r
        JOIN sel_models m USING (model_id)
        LEFT JOIN tests t ON t.campaign_id = r.campaign_id AND t.test_id = r.test_id
        -- The sweep's speed probes are not protocol tests: Choosing K reads them
        -- from their own views (curve_points).
        WHERE t.category IS DISTINCT FROM '{PROBE_CATEGORY}';

        -- A configuration is "main" when it ran every test its model ran; a
        -- --n-cpu-moe sweep usually runs a subset and is shown apart.
        CREATE OR REPLACE TEMP TABLE sel_series AS
        WITH t AS (
            SELECT model_id, config_label, any_value(n_cpu_moe) AS n_cpu_moe,
                   count(DISTINCT test_id) AS tests
            FROM sel_requests GROUP BY model_id, config_label
        )
        SELECT t.*, t.tests = max(t.tests) OVER (PARTITION BY model_id) AS main FROM t;

        CREATE OR REPLACE TEMP TABLE sel_scores AS
        SELECT s.request_id,
               max(value) FILTER (WHERE name = 'repetition') AS repetition,
               max(value) FILTER (WHERE name = 'loop') AS loop,
               max(value) FILTER (WHERE name = 'check') AS check_pass,
               max(value) FILTER (WHERE name = 'check_coverage') AS check_coverage,
               max(value) FILTER (WHERE name = 'completed') AS completed_score,
               max(value) FILTER (WHERE name = 'quality') AS quality,
               max(value) FILTER (WHERE name = 'same_seed_exact_match') AS same_exact,
               max(value) FILTER (WHERE name = 'same_seed_edit_similarity') AS same_similarity,
               max(value) FILTER (WHERE name = 'same_seed_prefix_words') AS same_prefix_words,
               -- why the check and quality were not judged (an output cut at a cap)
               max(json_extract_string(detail, '$.not_judged'))
                   FILTER (WHERE name = 'quality') AS not_judged,
               string_agg(DISTINCT scorer_version, ', ') AS scorer_versions
        FROM scores s JOIN sel_requests USING (request_id)
        GROUP BY s.request_id;

        CREATE OR REPLACE TEMP TABLE sel_gates AS
        SELECT campaign_id, gate_id, title, status, threshold, measured FROM gates
        WHERE campaign_id IN (SELECT campaign_id FROM sel_campaigns);
        """
    )
    if include_starved:
        _gates_with_starved(con)


def _gates_with_starved(con: duckdb.DuckDBPyConnection) -> None:
    """The stored gates were decided without the starved requests; decide them again,
    over the same stored rows, with them (the views already count them). Only the
    campaigns that were scored: the gates need their stored scores."""
    scored = [r[0] for r in con.execute("SELECT DISTINCT campaign_id FROM sel_gates").fetchall()]
    for campaign_id in scored:
        results = evaluate_gates(con, campaign_id)
        con.execute("DELETE FROM sel_gates WHERE campaign_id = ?", [campaign_id])
        con.executemany(
            "INSERT INTO sel_gates VALUES (?, ?, ?, ?, ?, ?)",
            [(campaign_id, g.gate_id, g.title, g.status, g.threshold, g.measured) for g in results],
        )


def stats_by(
    con: duckdb.DuckDBPyConnection,
    name: str,
    groups: Sequence[str],
    *,
    where: str = OK_STREAMED,
    source: str = "sel_requests",
    unit: str | None = None,
    missing: str = "no successful streamed request in this group",
    params: Sequence[Any] = (),
) -> dict[tuple[Any, ...], Stat]:
    """`name` summarised (N, mean, sd, 95 % CI, min, max) per group of `groups`.

    Uses `evidence.metrics.aggregate_sql` and `summarize`, so the statistics are
    the ones the methodology page describes. Keys are tuples of group values;
    `params` fill the `?` placeholders of `where`.
    """
    unit = metric(name).unit if unit is None else unit
    group_list = list(groups)
    base = aggregate_sql(name, group_list, source, where)
    # A figure that is not a metric of the registry (a score) counts no token.
    declared = METRICS.get(name)
    if declared is not None and declared.token_count:
        keys = ", ".join(group_list)
        sql = (
            f"SELECT a.*, coalesce(e.est, 0) AS est FROM ({base}) a LEFT JOIN "
            f"(SELECT {keys}, count(*) FILTER (WHERE tokens_estimated AND {name} IS NOT NULL)"
            f" AS est FROM {source} WHERE ({where}) GROUP BY {keys}) e USING ({keys})"
        )
        params = [*params, *params]
    else:
        sql = f"SELECT *, 0 AS est FROM ({base})"
    out: dict[tuple[Any, ...], Stat] = {}
    for row in rows(con, sql, params):
        key = tuple(row[g] for g in group_list)
        summary = summarize(int(row["n"]), row["mean"], row["sd"], row["min"], row["max"])
        out[key] = Stat.of(summary, unit, int(row["est"]), missing)
    return out


def stat_or_empty(
    table: dict[tuple[Any, ...], Stat], key: tuple[Any, ...], unit: str, reason: str
) -> Stat:
    """The group's Stat, or an empty one that says why there is none."""
    found = table.get(key)
    return found if found is not None and found.n > 0 else Stat.empty(unit, reason)


def group_keys(
    con: duckdb.DuckDBPyConnection,
    groups: Sequence[str],
    order: Sequence[str],
    where: str = OK_STREAMED,
    source: str = "sel_requests",
) -> list[tuple[Any, ...]]:
    """Every group of `source` matching `where`, as (groups..., order...) tuples in
    page order: a group whose metric is NULL throughout still gets its row."""
    cols = ", ".join([*groups, *order])
    return [
        tuple(r)
        for r in con.execute(
            f"SELECT DISTINCT {cols} FROM {source} WHERE {where} ORDER BY {', '.join(order)}"
        ).fetchall()
    ]
