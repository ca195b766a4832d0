"""Charts: Altair specs built from the page contexts, drawn offline.

Each chart is a Vega-Lite spec (inlined in its page and embedded by the Vega
bundle from `vl-convert-python`, which the build writes into the site) plus a
static SVG of the same spec, drawn by vl-convert, that the page shows until
(or instead of) the interactive version. A chart without data is a `Missing`
and the page says why.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import altair as alt

from common.errors import BuildError
from report.context.choosing_k import ChoosingKContext
from report.context.history import HistoryContext, HistoryMetric
from report.context.memory import MemoryContext
from report.context.performance import MetricTable, PerformanceContext
from report.context.quality import QualityContext
from report.context.streaming import StreamingContext
from report.formatting import inline_json, release_text, visible_controls
from report.values import SOURCE_TEXT, Missing, Quantity, Stat

WIDTH = 560
ROW_HEIGHT = 170
# Colours per configuration, fixed across every chart of a site.
PALETTE = ("#4c78a8", "#f58518", "#54a24b", "#b279a2", "#e45756", "#72b7b2", "#9d755d")
MIB = 1 << 20
# Facet labels above each panel, so long model names do not eat the width.
_HEADER = alt.Header(
    labelOrient="top", labelAnchor="start", labelFontWeight="bold", labelFontSize=12
)


@dataclass(frozen=True)
class Chart:
    """One chart: its id (file name and anchor), caption, alt text and spec."""

    chart_id: str
    title: str
    alt: str
    spec: dict[str, Any]


Charts = dict[str, Chart | Missing]


def vega_lite_version() -> str:
    """Altair's Vega-Lite version as vl-convert names it (e.g. '6.4')."""
    import vl_convert as vlc

    version = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    if version not in vlc.get_vegalite_versions():
        raise BuildError(
            f"Altair uses Vega-Lite {version}, which vl-convert-python "
            f"{getattr(vlc, '__version__', '?')} cannot draw; install matching versions "
            "(pip install -U altair vl-convert-python)"
        )
    return version


def _data(name: str = "data") -> Any:
    """A reference to one of the spec's named datasets. The values are attached by
    `_finish`, outside Altair, whose per-value validation and conversion of inline
    data costs seconds on large charts."""
    return alt.Data(name=name)  # type: ignore[no-untyped-call]


_VALID_CI = "isValid(datum.lo) && isValid(datum.hi)"


def _has_ci(rows: list[dict[str, Any]]) -> bool:
    """Whether any row has a confidence interval to draw (N >= 2)."""
    return any(r["lo"] is not None and r["hi"] is not None for r in rows)


def _colors(configs: Sequence[str], rows: Iterable[dict[str, Any]] = ()) -> alt.Scale:
    """The site's fixed colour per configuration, for the configurations in `rows`."""
    present = {r["config"] for r in rows}
    pairs = [
        (c, PALETTE[i % len(PALETTE)])
        for i, c in enumerate(dict.fromkeys(configs))
        if not present or c in present
    ]
    return alt.Scale(domain=[c for c, _ in pairs], range=[p for _, p in pairs])


def _rounded(row: dict[str, Any]) -> dict[str, Any]:
    """Floats to 6 significant digits: enough for any chart, and it keeps the
    site identical across builds (DuckDB's parallel sums differ in the last bits).
    Labels are the user's text: their control characters are shown, not applied."""
    return {
        k: float(f"{v:.6g}")
        if isinstance(v, float)
        else visible_controls(v)
        if isinstance(v, str)
        else v
        for k, v in row.items()
    }


def _chart(
    chart_id: str,
    title: str,
    chart: Any,
    datasets: dict[str, list[dict[str, Any]]],
    alt_text: str | None = None,
) -> Chart:
    """The finished chart: its spec titled, its datasets attached, the site's style set."""
    return Chart(chart_id, title, alt_text or title, _finish(chart, title, datasets))


def _shown(value: Any) -> Any:
    """`value`, a spec or part of one, with the control characters of every string shown,
    not applied. Labels reach a spec beside its data too: colour-scale domains, sort
    orders, titles. Raw, U+202E reversed a legend, and a NUL aborted the build."""
    if isinstance(value, str):
        return visible_controls(value)
    if isinstance(value, dict):
        return {_shown(k): _shown(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shown(v) for v in value]
    return value


def _finish(chart: Any, title: str, datasets: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    # Validation against the Vega-Lite schema costs seconds on large inline data;
    # the specs are built here from typed rows and drawn by vl-convert right after.
    # The datasets are shown row by row (`_rounded`), the rest of the spec here.
    spec: dict[str, Any] = _shown(chart.properties(title=title).to_dict(validate=False))
    spec["datasets"] = {name: [_rounded(row) for row in rows] for name, rows in datasets.items()}
    spec.setdefault("config", {})
    spec["config"].update(
        {
            "font": "sans-serif",
            "axis": {"labelFontSize": 11, "titleFontSize": 12},
            "legend": {"orient": "bottom"},
            "background": "white",
        }
    )
    return spec


def _clip(value: float | None) -> float | None:
    """Interval ends below zero are drawn at zero: every charted metric is
    non-negative, and with N = 2 a t-interval easily reaches below it."""
    return None if value is None else max(value, 0.0)


def _mib(figure: Quantity) -> float:
    """A memory figure in MiB (figures stored in bytes are converted)."""
    return figure.value / MIB if figure.unit == "bytes" else figure.value


def _stat_fields(stat: Stat) -> dict[str, Any]:
    """A statistic as chart fields: its mean, its 95 % CI (clipped at zero) and N."""
    return {"mean": stat.mean, "lo": _clip(stat.ci_low), "hi": stat.ci_high, "n": stat.n}


# A tooltip entry: a field shown as stored, or (field, number format[, title]).
Tip = str | tuple[str, str] | tuple[str, str, str]


def _tooltip(*fields: Tip) -> list[Any]:
    """The tooltip channel's entries, in order."""
    return [f if isinstance(f, str) else _tip(*f) for f in fields]


def _tip(field: str, number_format: str, title: str | None = None) -> alt.Tooltip:
    # No title: Vega-Lite's default (the field name); `None` would be written as null.
    return alt.Tooltip(field, format=number_format, title=alt.Undefined if title is None else title)


def _stat_tooltip() -> list[Any]:
    """Tooltip entries for the fields of `_stat_fields`."""
    return _tooltip(
        ("mean:Q", ".3~g"), ("lo:Q", ".3~g", "CI low"), ("hi:Q", ".3~g", "CI high"), "n:Q"
    )


def _ci_rules(base: Any, rows: list[dict[str, Any]], **mark: Any) -> list[Any]:
    """The CI error bars as a layer over `base`, or none where no row has an interval."""
    if not _has_ci(rows):
        return []
    return [base.mark_rule(**mark).encode(y="lo:Q", y2="hi:Q").transform_filter(_VALID_CI)]


def _config_color(configs: Sequence[str], rows: list[dict[str, Any]]) -> alt.Color:
    """The colour channel: one fixed colour per configuration."""
    return alt.Color("config:N", scale=_colors(configs, rows), title="configuration")


def _test_axis(tests: Sequence[str]) -> alt.X:
    """The x channel of per-test charts: tests in protocol order."""
    return alt.X("test:N", sort=list(tests), title=None, axis=alt.Axis(labelAngle=-30))


def _by_config(
    configs: Sequence[str],
    rows: list[dict[str, Any]],
    mark: str,
    style: dict[str, Any],
    **channels: Any,
) -> Any:
    """One mark (`mark_<mark>(**style)`) over the chart's dataset, one colour per configuration."""
    chart = getattr(alt.Chart(_data()), f"mark_{mark}")(**style)
    return chart.encode(color=_config_color(configs, rows), **channels)


def _panels(chart: Any, row: str = "model", width: int = WIDTH, height: Any = ROW_HEIGHT) -> Any:
    """One panel per value of `row` (a model by default), its label above the panel."""
    return chart.properties(width=width, height=height).facet(
        row=alt.Row(f"{row}:N", title=None, header=_HEADER)
    )


def _stat_rows(table: MetricTable) -> list[dict[str, Any]]:
    return [
        {"model": r.model, "test": r.test_id, "config": r.config, **_stat_fields(r.stat)}
        for r in table.rows
        if r.stat.mean is not None
    ]


def per_test_chart(
    table: MetricTable, configs: Sequence[str], tests: Sequence[str]
) -> Chart | Missing:
    """Mean per test with 95 % CI error bars, one colour per configuration."""
    m = table.metric
    data = _stat_rows(table)
    if not data:
        return Missing(f"no {m.title.lower()} was measured")
    unit = f" ({m.unit})" if m.unit else ""
    base = alt.Chart().encode(
        x=_test_axis(tests),
        xOffset=alt.XOffset("config:N", sort=list(configs)),
        color=_config_color(configs, data),
    )
    points = base.mark_point(filled=True, size=60).encode(
        y=alt.Y("mean:Q", title=f"{m.title}{unit}"),
        tooltip=["model:N", "test:N", "config:N", *_stat_tooltip()],
    )
    chart = _panels(alt.layer(*_ci_rules(base, data, strokeWidth=2), points, data=_data()))
    title = f"{m.title} per test: mean, and its 95 % CI where N >= 3"
    return _chart(
        f"perf-{m.name.replace('_', '-')}",
        title,
        chart,
        {"data": data},
        f"{title}, per model and configuration",
    )


def _vram_chart(memory: MemoryContext, configs: Sequence[str]) -> Chart | Missing:
    data = []
    for c in memory.comparisons:
        if not isinstance(c.headline, Quantity):
            continue
        source = str(c.headline.source)
        base, off = c.baseline_gpu, c.offload_gpu
        if isinstance(base, Quantity) and isinstance(off, Quantity) and base.source != off.source:
            # A baseline that did not fit: its estimate beside the offload's figure.
            source = f"baseline {base.source}, offload {off.source}"
        for config, fig in ((c.baseline_config, c.baseline_gpu), (c.config, c.offload_gpu)):
            if isinstance(fig, Quantity):
                data.append(
                    {
                        "series": f"{c.model} · {c.config} ({source})",
                        "config": config,
                        "mib": _mib(fig),
                    }
                )
    if not data:
        return Missing("no GPU memory figure, measured, logged or estimated")
    bars = _by_config(
        configs,
        data,
        "bar",
        {},
        y=alt.Y("config:N", sort=list(configs), title=None),
        x=alt.X("mib:Q", title="device memory (MiB)"),
        tooltip=_tooltip("series:N", "config:N", ("mib:Q", ",.1f")),
    )
    # Each row compares two configurations; a shared y scale would list all.
    chart = _panels(bars, "series", WIDTH - 120, 40).resolve_scale(y="independent")
    title = "Device memory, baseline vs offload (source in each row's label)"
    return _chart("memory-vram", title, chart, {"data": data})


def _distribution_chart(memory: MemoryContext, configs: Sequence[str]) -> Chart | Missing:
    data = [
        {
            "model": r.model,
            "config": r.config,
            "buffer": f"{b.device} {b.kind}",
            "where": "GPU" if b.on_gpu else "host",
            "mib": b.mib,
        }
        for r in memory.runs
        for b in r.buffers
        if b.mib > 0
    ]
    if not data:
        return Missing("no loader log with buffer sizes was parsed")
    bars = (
        alt.Chart(_data())
        .mark_bar()
        .encode(
            # In the campaign's order (n-cpu-moe-5 before n-cpu-moe-10), as the table.
            y=alt.Y("config:N", sort=list(configs), title=None),
            x=alt.X("sum(mib):Q", title="buffer size (MiB), from the loader log"),
            color=alt.Color("buffer:N", title="device and buffer"),
            tooltip=_tooltip("model:N", "config:N", "buffer:N", "where:N", ("mib:Q", ",.2f")),
        )
    )
    chart = _panels(bars, width=WIDTH - 120, height=alt.Step(22))
    title = "Memory distribution by device and buffer (loader log)"
    return _chart("memory-distribution", title, chart, {"data": data})


def _speed_curve_chart(ctx: ChoosingKContext, measure: str) -> Chart | Missing:
    """Device memory (x) against `measure` tokens/s (y) per K, one colour per probe:
    measured means with their 95 % CI, the speed model's prediction dashed, the
    device memory in force and common card sizes as vertical lines."""
    measured, predicted = [], []
    for p in ctx.points:
        if not isinstance(p.device, Quantity):
            continue
        at = {"model": p.model, "k": p.k, "mib": _mib(p.device)}
        for s in p.speeds:
            if s.measure != measure or s.measured.mean is None:
                continue
            probe = {**at, "probe": s.probe}
            measured.append({**probe, **_stat_fields(s.measured)})
            if isinstance(s.predicted, Quantity):
                predicted.append({**probe, "tps": s.predicted.value})
    if not measured:
        return Missing(f"no {measure} rate measured at any K")
    predicted.sort(key=lambda r: (r["model"], r["probe"], r["mib"]))
    lines = [{"mib": g * 1024, "what": f"{g} GiB card"} for g in ctx.cards]
    if ctx.device_limit is not None:
        lines.append({"mib": _mib(ctx.device_limit), "what": "device memory in force"})
    x = alt.X("mib:Q", title="device memory (MiB; loader log, estimated where it did not fit)")
    color = alt.Color("probe:N", title="probe (prompt)")
    keys: list[Tip] = ["model:N", "k:Q", "probe:N", ("mib:Q", ",.1f")]
    base = alt.Chart(_data("measured")).encode(x=x, color=color)
    title_y = f"{measure} tokens/s (mean; 95 % CI where N >= 3)"
    layers = [
        base.mark_point(filled=True, size=50).encode(
            y=alt.Y("mean:Q", title=title_y), tooltip=[*_tooltip(*keys), *_stat_tooltip()]
        ),
        *_ci_rules(base, measured),
    ]
    if predicted:
        layers.append(
            alt.Chart(_data("predicted"))
            .mark_line(strokeDash=[4, 3], opacity=0.8)
            .encode(
                x=x,
                y="tps:Q",
                color=color,
                detail="model:N",
                tooltip=_tooltip(*keys, ("tps:Q", ".3~g", "predicted")),
            )
        )
    if lines:
        layers.append(
            alt.Chart(_data("lines"))
            .mark_rule(strokeDash=[2, 2])
            .encode(
                x="mib:Q",
                color=alt.value("#d62728"),
                tooltip=_tooltip("what:N", ("mib:Q", ",.1f")),
            )
        )
    title = f"{measure.capitalize()} speed against device memory, per K (dashed: predicted)"
    return _chart(
        f"choosing-k-{measure}",
        title,
        alt.layer(*layers).properties(width=WIDTH, height=260),
        {"measured": measured, "predicted": predicted, "lines": lines},
    )


def choosing_k_charts(
    ctx: ChoosingKContext, configs: Sequence[str], tests: Sequence[str]
) -> Charts:
    """The Choosing K page's charts: decode, then prefill, against device memory."""
    return {f"choosing-k-{m}": _speed_curve_chart(ctx, m) for m in ("decode", "prefill")}


def _memory_timeline_chart(memory: MemoryContext, configs: Sequence[str]) -> Chart | Missing:
    data = [
        {"model": p.model, "config": p.config, "t": p.t_s, "mib": size / MIB, "memory": memory_kind}
        for p in memory.timeline
        for size, memory_kind in (
            (p.rss_bytes, "host RSS"),
            (p.gpu_bytes, "device (RPC process or NVML)"),
        )
        if size is not None
    ]
    if not data:
        return Missing("no telemetry samples")
    lines = _by_config(
        configs,
        data,
        "line",
        {},
        x=alt.X("t:Q", title="seconds since launch"),
        y=alt.Y("mib:Q", title="MiB (max per interval)"),
        strokeDash=alt.StrokeDash("memory:N", title="memory"),
        tooltip=_tooltip("config:N", "memory:N", ("t:Q", ".0f"), ("mib:Q", ",.1f")),
    )
    title = "Server memory over each run (telemetry, ~10 Hz)"
    return _chart("memory-timeline", title, _panels(lines), {"data": data})


def _itl_chart(perf: PerformanceContext, configs: Sequence[str]) -> Chart | Missing:
    data = [
        {"model": b.model, "config": b.config, "ms": b.ms, "share": b.share} for b in perf.itl_hist
    ]
    if not data:
        return Missing("no gaps: no successful streamed request with two content events")
    steps = _by_config(
        configs,
        data,
        "line",
        {"interpolate": "step-after"},
        x=alt.X("ms:Q", scale=alt.Scale(type="log"), title="gap between content events (ms, log)"),
        y=alt.Y("share:Q", axis=alt.Axis(format="%"), title="share of gaps"),
        tooltip=_tooltip("config:N", ("ms:Q", ".3~g"), ("share:Q", ".2%")),
    )
    title = "Inter-token latency distribution"
    return _chart("perf-itl", title, _panels(steps), {"data": data})


def _curve_chart(perf: PerformanceContext, configs: Sequence[str]) -> Chart | Missing:
    data = [
        {
            "model": p.model,
            "config": p.config,
            "tenth": p.decile + 1,
            **_stat_fields(p.rate),
        }
        for p in perf.curve
        if p.rate.mean is not None
    ]
    if not data:
        return Missing("no long test with at least 20 tokens")
    base = alt.Chart().encode(
        x=alt.X("tenth:O", title="tenth of the generation"),
        color=_config_color(configs, data),
    )
    line = base.mark_line(point=True).encode(
        y=alt.Y("mean:Q", title="decode tokens/s"),
        tooltip=_tooltip("config:N", "tenth:O", ("mean:Q", ".3~g"), "n:Q"),
    )
    chart = _panels(alt.layer(line, *_ci_rules(base, data), data=_data()))
    title = "Decode rate along long generations (mean; 95 % CI where N >= 3)"
    return _chart("perf-consistency", title, chart, {"data": data})


def _timeline_chart(perf: PerformanceContext, configs: Sequence[str]) -> Chart | Missing:
    tl = perf.timeline
    if isinstance(tl, Missing):
        return tl
    data = [{"config": p.label, "ms": p.t_ms, "tokens": p.tokens} for p in tl.points]
    if not data:
        return Missing("the chosen request has no content events")
    chart = _by_config(
        configs,
        data,
        "line",
        {"interpolate": "step-after"},
        x=alt.X("ms:Q", title="ms since the request was sent"),
        y=alt.Y("tokens:Q", title="content events received"),
        tooltip=_tooltip("config:N", ("ms:Q", ".0f"), "tokens:Q"),
    ).properties(width=WIDTH, height=240)
    title = f"Token timeline: {tl.test_id}, repeat {tl.repeat}, {tl.model}"
    return _chart("perf-timeline", title, chart, {"data": data})


def _stream_compare_chart(
    stream: StreamingContext, configs: Sequence[str], tests: Sequence[str]
) -> Chart | Missing:
    data = []
    for r in stream.compare:
        for mode, stat in (("streamed", r.streamed_e2e), ("not streamed", r.plain_e2e)):
            if stat.mean is not None:
                data.append(
                    {
                        "model": r.model,
                        "test": r.test_id,
                        "config": r.config,
                        "mode": mode,
                        "series": f"{r.config}, {mode}",
                        "e2e": stat.mean,
                    }
                )
    if not data:
        return Missing("no non-streamed run in this campaign")
    points = _by_config(
        configs,
        data,
        "point",
        {"filled": True, "size": 60},
        x=_test_axis(tests),
        y=alt.Y("e2e:Q", title="end-to-end time (s, mean)"),
        shape=alt.Shape("mode:N", title="mode"),
        xOffset=alt.XOffset("series:N"),
        tooltip=_tooltip("config:N", "mode:N", "test:N", ("e2e:Q", ".3~g")),
    )
    title = "Streamed vs non-streamed end-to-end time"
    return _chart("streaming-compare", title, _panels(points), {"data": data})


def _repetition_chart(
    quality: QualityContext, configs: Sequence[str], tests: Sequence[str]
) -> Chart | Missing:
    data = [
        {
            "model": r.model,
            "test": r.test_id,
            "config": r.config,
            "mean": r.scores["repetition"].mean,
            "max": r.scores["repetition"].max,
        }
        for r in quality.per_test
        if r.scores["repetition"].mean is not None
    ]
    if not data:
        return Missing(quality.no_scores_reason)
    if not any(d["max"] for d in data):
        return Missing(
            "every repetition score is 0: no output repeated a 4-word window", not_applicable=True
        )
    bars = _by_config(
        configs,
        data,
        "bar",
        {},
        x=_test_axis(tests),
        xOffset=alt.XOffset("config:N", sort=list(configs)),
        y=alt.Y("mean:Q", title="repetition score (mean; 0 = none)"),
        tooltip=_tooltip("config:N", "test:N", ("mean:Q", ".3f"), ("max:Q", ".3f")),
    )
    title = "Repetition score per test"
    return _chart("quality-repetition", title, _panels(bars), {"data": data})


def _history_chart(
    history: HistoryContext, m: HistoryMetric, configs: Sequence[str]
) -> Chart | Missing:
    """One metric across releases: mean with its 95 % CI per release, one panel per
    model (and host), flagged changes drawn large."""
    if not history.enough:
        return Missing("history needs two releases", not_applicable=True)
    order = [release_text(r) for r in history.releases]
    data = []
    for s in m.series:
        panel = s.model + (f" · host {s.host}" if s.host else "")
        if s.source:
            panel += f" ({SOURCE_TEXT[s.source]})"
        for p in s.points:
            if p.stat.mean is None:
                continue
            data.append(
                {
                    "panel": panel,
                    "config": s.config,
                    "release": release_text(p.release),
                    **_stat_fields(p.stat),
                    "change": p.change.verdict if p.change else "first release",
                }
            )
    if not data:
        return Missing(f"no {m.title} figure in the shown campaigns")
    unit = f" ({m.unit})" if m.unit else ""
    base = alt.Chart().encode(
        x=alt.X("release:O", sort=order, title="release", axis=alt.Axis(labelAngle=-20)),
        color=_config_color(configs, data),
    )
    changes = ["improvement", "regression", "within", "not judged", "first release"]
    layers = [
        *_ci_rules(base, data, strokeWidth=2),
        base.mark_line(opacity=0.5).encode(y=alt.Y("mean:Q", title=f"{m.title}{unit}")),
        base.mark_point(filled=True).encode(
            y="mean:Q",
            size=alt.Size(
                "change:N",
                scale=alt.Scale(domain=changes, range=[220, 220, 50, 50, 50]),
                title="change from the previous release",
            ),
            shape=alt.Shape(
                "change:N",
                scale=alt.Scale(
                    domain=changes,
                    range=["triangle-up", "triangle-down", "circle", "circle", "circle"],
                ),
                title="change from the previous release",
            ),
            tooltip=["panel:N", "config:N", "release:O", *_stat_tooltip(), "change:N"],
        ),
    ]
    chart = _panels(alt.layer(*layers, data=_data()), "panel", WIDTH - 120, 150)
    title = f"{m.title} by release: mean, and its 95 % CI where N >= 3"
    return _chart(
        f"history-{m.name}",
        title,
        chart,
        {"data": data},
        f"{title}, per model and configuration",
    )


def memory_charts(memory: MemoryContext, configs: Sequence[str], tests: Sequence[str]) -> Charts:
    """The Memory page's charts, keyed by id (a `Missing` where there is no data)."""
    return {
        "memory-vram": _vram_chart(memory, configs),
        "memory-distribution": _distribution_chart(memory, configs),
        "memory-timeline": _memory_timeline_chart(memory, configs),
    }


def performance_charts(
    perf: PerformanceContext, configs: Sequence[str], tests: Sequence[str]
) -> Charts:
    """The Performance page's charts: the fixed ones, then one per headline metric."""
    charts: Charts = {
        "perf-itl": _itl_chart(perf, configs),
        "perf-consistency": _curve_chart(perf, configs),
        "perf-timeline": _timeline_chart(perf, configs),
    }
    for table in perf.metrics:
        charts[f"perf-{table.metric.name.replace('_', '-')}"] = per_test_chart(
            table, configs, tests
        )
    return charts


def streaming_charts(
    stream: StreamingContext, configs: Sequence[str], tests: Sequence[str]
) -> Charts:
    """The Streaming page's chart."""
    return {"streaming-compare": _stream_compare_chart(stream, configs, tests)}


def quality_charts(quality: QualityContext, configs: Sequence[str], tests: Sequence[str]) -> Charts:
    """The Quality page's chart."""
    return {"quality-repetition": _repetition_chart(quality, configs, tests)}


def history_charts(history: HistoryContext, configs: Sequence[str], tests: Sequence[str]) -> Charts:
    """The History page's charts, one per metric followed across releases."""
    return {f"history-{m.name}": _history_chart(history, m, configs) for m in history.metrics}


def merge_charts(drawn: Iterable[tuple[str, Charts]]) -> Charts:
    """Every chart of the site, keyed by id, from each page's (name, charts); two pages
    drawing one id is an error (a template finds a chart by its id alone)."""
    charts: Charts = {}
    for page, page_charts in drawn:
        for chart_id, chart in page_charts.items():
            if chart_id in charts:
                raise BuildError(f"page {page!r} draws chart {chart_id!r}, drawn already")
            charts[chart_id] = chart
    return charts


def spec_json(spec: dict[str, Any]) -> str:
    """The spec as JSON safe to inline in a <script> element."""
    return inline_json(spec)


def write_charts(charts: Charts, out_dir: Path, vl_version: str) -> None:
    """Write each chart's spec (.vl.json) and static SVG into `out_dir`."""
    import vl_convert as vlc

    out_dir.mkdir(parents=True, exist_ok=True)
    for chart in charts.values():
        if isinstance(chart, Missing):
            continue
        (out_dir / f"{chart.chart_id}.vl.json").write_text(spec_json(chart.spec), "utf-8")
        svg = vlc.vegalite_to_svg(chart.spec, vl_version=vl_version)
        (out_dir / f"{chart.chart_id}.svg").write_text(svg, "utf-8")
