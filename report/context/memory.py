"""Memory page: GPU and host memory per server run, VRAM saved, expert placement.

GPU memory has three possible sources, and a comparison never mixes them:
measured (NVML device memory minus the figure before launch, both runs on the
same host and build), the GPU buffers the loader log printed, or the GGUF
weights-only estimate. Each figure is shown with its source; the first one
available for *both* runs of a comparison is the headline.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, cast

import duckdb

from evidence.llama_names import is_host_device
from report.context import reloads
from report.context.common import as_dict, as_list, no_gpu_reason, ranges
from report.queries import Selection, metric, rows
from report.values import SOURCE_TEXT, Figure, Missing, Quantity, Source

MIB = 1 << 20


@dataclass(frozen=True)
class BufferRow:
    device: str
    kind: str
    mib: float
    on_gpu: bool


@dataclass(frozen=True)
class PlacementRow:
    """Where the expert tensors went, per the loader log, against the GGUF file
    (the verdict is the scorer's, stored in `placement_checks`)."""

    status: str  # PASS | FAIL | NOT MEASURED
    expected_tensors: int | None
    overridden_tensors: int | None
    overridden_mib: Figure
    targets: tuple[str, ...]
    layers: str
    detail: str


@dataclass(frozen=True)
class RunMemory:
    """Memory facts of one server configuration (its first successful start)."""

    server_run_id: str
    model_id: str
    model: str
    config: str
    n_cpu_moe: int | None
    status: str
    version: str | None
    host_id: str
    gpu_measured: Figure
    gpu_idle_measured: Figure
    gpu_log: Figure
    gpu_estimated: Figure
    rss_idle: Figure
    rss_peak: Figure
    cpu_mapped: Figure
    cpu_cores: Figure  # mean busy cores of the server tree while generating
    load_ms: Figure
    buffers: tuple[BufferRow, ...]
    placement: PlacementRow
    layers_on_cpu: int | None
    # Why the load did not fit the device (the stored one line), when it did not.
    unfit: str | None = None

    @property
    def buffer_mib(self) -> dict[str, float]:
        """Buffer sizes keyed "device kind" (e.g. "CUDA0 model")."""
        return {f"{b.device} {b.kind}": b.mib for b in self.buffers}

    @property
    def offloaded(self) -> bool:
        """Whether any expert layer was kept in CPU memory by a flag."""
        return self.n_cpu_moe is not None and self.n_cpu_moe != 0


@dataclass(frozen=True)
class VramComparison:
    """VRAM saved by one offload configuration against the model's baseline."""

    model_id: str
    model: str
    config: str
    n_cpu_moe: int | None
    baseline_config: str
    measured: Figure
    log: Figure
    estimated: Figure
    headline: Figure
    baseline_gpu: Figure
    offload_gpu: Figure
    expected: Figure
    deviation: Figure
    # (source, baseline device memory, offload device memory): the cross-checks
    # of the headline, as memory (MiB), not as more percentages.
    memory: tuple[tuple[str, Figure, Figure], ...] = ()


@dataclass(frozen=True)
class MemorySample:
    model: str
    config: str
    t_s: float
    rss_bytes: float | None
    gpu_bytes: float | None


@dataclass(frozen=True)
class MemoryContext:
    """The memory page: per-run memory, VRAM saved, placement, trade-off."""

    runs: tuple[RunMemory, ...]
    comparisons: tuple[VramComparison, ...]
    has_sweep: bool
    timeline: tuple[MemorySample, ...]
    gpu_reason: str | None  # why no GPU figure is measured, when none is
    buffer_columns: tuple[tuple[str, bool], ...]  # ("device kind", on GPU), first seen first
    # Servers that loaded the model for each request: their memory is per request.
    model_loads: tuple[reloads.ReloadRow, ...] = ()
    # Models whose baseline did not fit the device: its memory is the estimate.
    unfit_baselines: tuple[UnfitBaseline, ...] = ()


@dataclass(frozen=True)
class UnfitBaseline:
    model: str
    reason: str  # "does not fit: the server could not allocate ..."
    estimate: Figure


def build(con: duckdb.DuckDBPyConnection, sel: Selection) -> MemoryContext:
    """The memory page's context."""
    facts = rows(
        con,
        """
        SELECT r.server_run_id, r.model_id, r.model, r.config_label, r.n_cpu_moe, r.status,
               r.error, r.version, r.load_ms, r.log_summary, r.gpu_before, c.host_id, h.gpu_status,
               m.spec, m.expert_tensor_count, m.expert_tensor_bytes, m.expected_vram_saved_pct,
               mem.rss_idle_bytes, mem.rss_peak_bytes, mem.gpu_idle_delta_bytes,
               mem.gpu_peak_delta_bytes, mem.cpu_percent_avg_generating, mem.telemetry_samples,
               mem.device_source, mem.device_idle_delta_bytes, mem.device_peak_delta_bytes,
               (SELECT count(gpu_mem_used_bytes) + count(device_rss_bytes) FROM telemetry t
                 WHERE t.server_run_id = r.server_run_id) AS gpu_samples,
               est.estimated_bytes, est.estimate_parts, est.weights_gpu_bytes, est.kv_bytes,
               est.compute_bytes, est.n_ctx, est.n_ubatch,
               cpu_expert_bytes(m.spec, r.n_cpu_moe) AS experts_on_cpu_bytes,
               pc.status AS placement_status, pc.message AS placement_message,
               pc.expected_count AS placement_expected,
               pc.overridden_count AS placement_overridden
        FROM sel_runs r
        JOIN campaigns c USING (campaign_id)
        JOIN hosts h ON h.host_id = c.host_id
        JOIN sel_models m USING (model_id)
        LEFT JOIN server_run_memory mem USING (server_run_id)
        LEFT JOIN config_device_estimate est ON est.campaign_id = r.campaign_id
             AND est.model_id = r.model_id AND est.config_label = r.config_label
        LEFT JOIN placement_checks pc ON pc.server_run_id = r.server_run_id
        WHERE r.attempt = 1
        ORDER BY r.model_order, r.config_order
        """,
    )
    model_loads = reloads.build(con)
    per_request = {r.server_run_id for r in model_loads if r.reloads}
    runs = tuple(_not_resident(_run_memory(f), f["server_run_id"] in per_request) for f in facts)
    expected = {f["model_id"]: f["expected_vram_saved_pct"] for f in facts}
    comparisons = tuple(_comparisons(con, runs, expected))
    # A run that did not fit the device has no measurement by nature: not a reason.
    reasons = {
        r.gpu_measured.reason for r in runs if isinstance(r.gpu_measured, Missing) and not r.unfit
    }
    return MemoryContext(
        runs=runs,
        comparisons=comparisons,
        has_sweep=any(r.n_cpu_moe is not None and r.n_cpu_moe > 0 for r in runs),
        timeline=_timeline(con),
        buffer_columns=tuple(
            dict.fromkeys((f"{b.device} {b.kind}", b.on_gpu) for r in runs for b in r.buffers)
        ),
        gpu_reason="; ".join(sorted(reasons)) if reasons and len(reasons) == 1 else None,
        model_loads=model_loads,
        unfit_baselines=tuple(
            UnfitBaseline(r.model, r.unfit, r.gpu_estimated)
            for r in runs
            if r.config == "baseline" and r.unfit
        ),
    )


def _bytes(value: Any) -> Quantity | None:
    return None if value is None else Quantity(float(value), "bytes", "measured")


def _run_memory(f: dict[str, Any]) -> RunMemory:
    log = as_dict(f["log_summary"])
    spec = as_dict(f["spec"])
    gpu_before = as_dict(f["gpu_before"])
    k = f["n_cpu_moe"]
    device_source = f["device_source"]
    no_gpu: str | None = None
    if device_source is not None and device_source != "NVML":
        no_gpu = None if f["gpu_samples"] else "no device memory samples in this run's telemetry"
    elif f["gpu_status"] != "ok":
        no_gpu = no_gpu_reason(f["gpu_status"])
    elif gpu_before and not gpu_before.get("available", False):
        no_gpu = f"NVML was unavailable before launch ({gpu_before.get('reason', 'no reason')})"
    elif not f["gpu_samples"]:
        no_gpu = "no GPU memory samples in this run's telemetry"

    def measured(value: Any, what: str) -> Figure:
        if f["status"] == "does_not_fit":
            return Missing("it does not fit the device: nothing loaded to measure")
        if no_gpu:
            return Missing(no_gpu)
        if value is None:
            return Missing(f"no telemetry sample in the {what} window")
        return Quantity(float(value), "bytes", "measured", device_source)

    if f["status"] == "does_not_fit":
        gpu_log: Figure = Missing("it does not fit the device: the load stopped at its buffers")
        cpu_mapped: Figure = gpu_log
    elif not log:
        log_reason = "no loader log was parsed for this run" + (
            f" ({f['status']})" if f["status"] != "stopped" else ""
        )
        gpu_log = Missing(log_reason)
        cpu_mapped = Missing(log_reason)
    else:
        total = log.get("gpu_total_mib")
        gpu_log = (
            Quantity(float(total), "MiB", "log")
            if total is not None
            else Missing("the loader log shows no GPU buffers")
        )
        mapped = log.get("cpu_mapped_mib")
        cpu_mapped = (
            Quantity(float(mapped), "MiB", "log")
            if mapped is not None
            else Missing("the loader log printed no CPU_Mapped buffer")
        )
    gpu_estimated = _estimate(spec, f)
    buffers = tuple(
        BufferRow(_device_name(str(device)), str(kind), float(mib), not is_host_device(str(device)))
        for device, kinds in as_dict(log.get("buffers")).items()
        if isinstance(kinds, dict)
        for kind, mib in kinds.items()
        if isinstance(mib, (int, float))
    )
    placement, layers_on_cpu = _placement(log, f)
    samples = f["telemetry_samples"] or 0
    no_telemetry = "no telemetry samples for this run"
    rss_idle = _bytes(f["rss_idle_bytes"])
    rss_peak = _bytes(f["rss_peak_bytes"])
    cpu = f["cpu_percent_avg_generating"]
    return RunMemory(
        server_run_id=f["server_run_id"],
        model_id=f["model_id"],
        model=f["model"],
        config=f["config_label"],
        n_cpu_moe=k,
        status=f["status"],
        version=f["version"],
        host_id=f["host_id"],
        gpu_measured=measured(f["device_peak_delta_bytes"], "generation"),
        gpu_idle_measured=measured(f["device_idle_delta_bytes"], "idle"),
        gpu_log=gpu_log,
        gpu_estimated=gpu_estimated,
        rss_idle=rss_idle or Missing(no_telemetry if not samples else "no sample after load"),
        rss_peak=rss_peak
        or Missing(no_telemetry if not samples else "no sample during generation"),
        cpu_mapped=cpu_mapped,
        cpu_cores=Quantity(float(cpu) / 100.0, "cores", "measured")
        if cpu is not None
        else Missing(no_telemetry if not samples else "no sample during generation"),
        load_ms=Quantity(float(f["load_ms"]), "ms", "measured")
        if f["load_ms"] is not None
        else Missing("the server was attached, not launched"),
        buffers=buffers,
        placement=placement,
        layers_on_cpu=layers_on_cpu,
        unfit=f["error"] if f["status"] == "does_not_fit" else None,
    )


def _not_resident(run: RunMemory, reloads_per_request: bool) -> RunMemory:
    """A server that loads the model for each request holds it only while a request
    runs: its memory in the idle window after start-up is not the model's."""
    if not reloads_per_request:
        return run
    why = Missing(
        "not resident between requests: this server loaded the model for each request "
        "(memory per request below)"
    )
    return dataclasses.replace(run, rss_idle=why, gpu_idle_measured=why)


def _device_name(device: str) -> str:
    """A loader-log device without its endpoint: RPC0[127.0.0.1:40411] is RPC0. Each server
    start of a campaign gets an RPC device on a port of its own, so with the endpoint every
    configuration had buffer columns (and chart colours) of its own."""
    return _ENDPOINT.sub("", device)


_ENDPOINT = re.compile(r"\[[^\]]*\]$")


def _estimate(spec: dict[str, Any], f: dict[str, Any]) -> Figure:
    """The predicted device memory for this configuration (defined once, in the
    `config_device_estimate` view), its parts in the note: GGUF weights on the
    device + the log's KV and compute buffers, or the weights alone without a log."""
    if not spec:
        return Missing("the model file was not inspected (attached server)")
    if f["estimated_bytes"] is None:
        return Missing("the GGUF inspection recorded no weight split")
    mib = 1 << 20
    parts = (
        f"GGUF weights {f['weights_gpu_bytes'] / mib:,.1f} + KV {(f['kv_bytes'] or 0) / mib:,.1f} "
        f"+ compute {(f['compute_bytes'] or 0) / mib:,.1f} MiB"
    )
    if f["estimate_parts"] == "weights + KV + compute":
        note = (
            f"{parts}, predicted from the model's shapes at a {f['n_ctx']}-token context "
            f"and {f['n_ubatch']}-token micro-batches"
        )
    elif f["estimate_parts"] == "weights + log KV + log compute":
        note = f"{parts} (KV and compute are the log's: this store has no model shapes)"
    else:
        note = "GGUF weights only: neither the model's shapes nor a loader log gave the rest"
    return Quantity(float(f["estimated_bytes"]), "bytes", "estimated", note)


def _placement(log: dict[str, Any], f: dict[str, Any]) -> tuple[PlacementRow, int | None]:
    """The scorer's stored placement check (`placement_checks`) plus what the log
    says about where the overridden tensors went."""
    status = f["placement_status"] or "NOT MEASURED"
    detail = f["placement_message"] or "not checked: the scorer has not run on this campaign"
    targets = tuple(str(t) for t in as_list(log.get("override_targets")))
    layers = [int(x) for x in as_list(log.get("overridden_layers")) if isinstance(x, int)]
    # Sizes from the file (exact), not the log's rounded per-tensor sizes; the log
    # says which tensors moved.
    on_cpu = f["experts_on_cpu_bytes"]
    overridden_mib: Figure = (
        Quantity(float(on_cpu), "bytes", "estimated", "GGUF bytes of the experts kept on the CPU")
        if on_cpu is not None
        else Missing("the model file was not inspected (attached server)")
    )
    if status == "PASS" and not all(is_host_device(t) for t in targets):
        detail += f"; note: override targets {', '.join(targets)}"
    return (
        PlacementRow(
            status,
            f["placement_expected"],
            f["placement_overridden"],
            overridden_mib,
            targets,
            ranges(layers),
            detail,
        ),
        len(layers) if log else None,
    )


_SOURCE_NOTES = {
    "measured": "device memory after load minus the figure before launch",
    "log": "model + KV + compute buffers on the device",
    "estimated": "GGUF weights on the device + KV cache + compute buffer, predicted from "
    "the model's shapes",
}


def _comparisons(
    con: duckdb.DuckDBPyConnection, runs: tuple[RunMemory, ...], expected: dict[str, Any]
) -> list[VramComparison]:
    """One row per offload configuration. The savings, their source and the
    reference run come from the `vram_saved` view (the one definition, which the
    memory-savings gate reads too); the runs only explain a missing figure."""
    saved = {
        (v["model_id"], v["config_label"]): v
        for v in rows(
            con,
            "SELECT v.* FROM vram_saved v JOIN sel_models m USING (campaign_id, model_id)",
        )
    }
    out: list[VramComparison] = []
    for model_id in dict.fromkeys(r.model_id for r in runs):
        model_runs = [r for r in runs if r.model_id == model_id]
        for run in model_runs:
            if not run.offloaded:
                continue
            base = next((r for r in model_runs if r.config == "baseline"), None)
            view = saved.get((model_id, run.config))
            out.append(_compare(view, base, run, expected.get(model_id)))
    return out


def _side_reason(base: Figure, off: Figure) -> Missing | None:
    """Why a source has no saving: the side that lacks the figure, base first."""
    for fig in (base, off):
        if isinstance(fig, Missing):
            return fig
    return None


def _compare(
    view: dict[str, Any] | None,
    base: RunMemory | None,
    off: RunMemory,
    expected_pct: float | None,
) -> VramComparison:
    if base is None or view is None:
        none = Missing(
            "this model has no configuration labelled 'baseline' to compare with"
            if base is None
            else f"this configuration {off.unfit}"
            if off.unfit
            else "the baseline or this configuration never became ready"
        )
        return VramComparison(
            off.model_id,
            off.model,
            off.config,
            off.n_cpu_moe,
            base.config if base else "none",
            none,
            none,
            none,
            none,
            none,
            none,
            none,
            none,
        )
    sides: dict[str, tuple[Figure, Figure]] = {
        "measured": (base.gpu_idle_measured, off.gpu_idle_measured),
        "log": (base.gpu_log, off.gpu_log),
        "estimated": (base.gpu_estimated, off.gpu_estimated),
    }
    by_source: dict[str, Figure] = {}
    unfit_base = bool(view["baseline_does_not_fit"])
    for source, (b, o) in sides.items():
        pct = view[f"{source}_pct"]
        if unfit_base and source != "estimated":
            by_source[source] = Missing(
                f"the baseline {view['baseline_unfit_error'] or 'does not fit the device'}"
            )
        elif pct is not None:
            note = _SOURCE_NOTES[source]
            if source == "measured" and view["measured_source"]:
                note = f"{view['measured_source']}: {note}"
            elif source == "estimated" and view["estimate_parts"] == "weights only":
                note = "GGUF weight bytes on the device only (no loader log)"
            by_source[source] = Quantity(
                float(pct), metric("vram_saved_pct").unit, cast(Source, source), note
            )
        elif (reason := _side_reason(b, o)) is not None:
            by_source[source] = reason
        elif source == "measured" and not view["same_build"]:
            by_source[source] = Missing("baseline and offload ran different server builds")
        else:
            by_source[source] = Missing(f"the baseline's {source} GPU memory is not positive")
    headline: Figure
    base_gpu: Figure
    off_gpu: Figure
    source = view["source"]
    if source == "estimated baseline":
        # The protocol's own model table: the baseline's device memory estimated (it
        # did not fit), the offload's as the server reported it; each side says which.
        base_gpu = Quantity(
            float(view["baseline_bytes"]),
            "bytes",
            "estimated",
            f"the baseline {view['baseline_unfit_error'] or 'does not fit the device'}; "
            "its device memory is predicted from the model's shapes",
        )
        off_gpu = Quantity(
            float(view["offload_bytes"]), "bytes", cast(Source, view["offload_source"])
        )
        headline = Quantity(
            float(view["vram_saved_pct"]),
            metric("vram_saved_pct").unit,
            "estimated",
            f"against an estimated baseline (it does not fit the device): offload "
            f"{SOURCE_TEXT[cast(Source, view['offload_source'])]}, baseline estimated",
        )
    elif source is not None:
        headline = by_source[source]
        base_gpu = Quantity(float(view["baseline_bytes"]), "bytes", cast(Source, source))
        off_gpu = Quantity(float(view["offload_bytes"]), "bytes", cast(Source, source))
    else:
        headline = base_gpu = off_gpu = Missing(
            "no source (measured, loader log, GGUF estimate) has a figure for both runs"
        )
    # What the memory gate judges against (scoring.gates._memory_savings): the
    # config's expectation, else the prediction from the model's shapes (never from
    # the log, so a saving from the log or a process is a real test of it).
    expected: Figure
    if expected_pct is not None and off.n_cpu_moe == -1:
        expected = Quantity(float(expected_pct), "%", None, "from the campaign config")
    elif view["source"] in ("measured", "log", "estimated baseline") and (
        view["estimated_pct"] is not None
    ):
        expected = Quantity(
            float(view["estimated_pct"]),
            "%",
            "estimated",
            "predicted: GGUF weights + KV + compute from the model's shapes",
        )
    elif off.n_cpu_moe != -1:
        expected = Missing("the config's expectation is for --cpu-moe", not_applicable=True)
    else:
        expected = Missing("the campaign config gives no expected saving for this model")
    deviation: Figure
    if isinstance(headline, Quantity) and isinstance(expected, Quantity):
        deviation = Quantity(headline.value - expected.value, "points", headline.source)
    elif isinstance(expected, Missing):
        deviation = expected
    else:
        deviation = headline
    return VramComparison(
        model_id=off.model_id,
        model=off.model,
        config=off.config,
        n_cpu_moe=off.n_cpu_moe,
        baseline_config=view["baseline_label"],
        measured=by_source["measured"],
        log=by_source["log"],
        estimated=by_source["estimated"],
        headline=headline,
        baseline_gpu=base_gpu,
        offload_gpu=off_gpu,
        expected=expected,
        deviation=deviation,
        memory=tuple((source, b, o) for source, (b, o) in sides.items()),
    )


def _timeline(con: duckdb.DuckDBPyConnection) -> tuple[MemorySample, ...]:
    """Server memory over each run, at most ~120 points per run (max per bucket)."""
    data = rows(
        con,
        """
        WITH span AS (
            -- From launch to the end of the last request: the samples taken while the
            -- server shut down are not part of the run's memory.
            SELECT r.server_run_id, r.model, r.model_order, r.config_label, r.config_order,
                   coalesce(r.launch_ns, min(t.t_ns)) AS t0,
                   coalesce(any_value(w.gen_end_ns), max(t.t_ns)) AS t1,
                   greatest(1, (coalesce(any_value(w.gen_end_ns), max(t.t_ns))
                                - coalesce(r.launch_ns, min(t.t_ns))) // 120) AS width
            FROM sel_runs r JOIN telemetry t USING (server_run_id)
            LEFT JOIN server_run_windows w USING (server_run_id)
            WHERE r.attempt = 1
            GROUP BY r.server_run_id, r.model, r.model_order, r.config_label, r.config_order,
                     r.launch_ns
        )
        SELECT s.model, s.config_label,
               ((t.t_ns - s.t0) // s.width) * s.width / 1e9 AS t_s,
               max(t.rss_bytes) AS rss,
               coalesce(max(t.device_rss_bytes), max(t.gpu_mem_used_bytes)) AS gpu,
               min(s.model_order) AS mo, min(s.config_order) AS co
        FROM telemetry t JOIN span s USING (server_run_id)
        WHERE t.t_ns <= s.t1
        GROUP BY s.model, s.config_label, t_s
        ORDER BY mo, co, t_s
        """,
    )
    return tuple(
        MemorySample(
            d["model"],
            d["config_label"],
            float(d["t_s"]),
            None if d["rss"] is None else float(d["rss"]),
            None if d["gpu"] is None else float(d["gpu"]),
        )
        for d in data
    )
