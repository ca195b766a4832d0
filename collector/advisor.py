"""Which K fits: device memory per `--n-cpu-moe K`, predicted from the model file.

For every K from 0 (no expert in CPU memory) to all MoE blocks, the device holds the
GGUF weights left there, the KV cache for the context and the compute buffer of one
micro-batch; the formulas are the store's own (SQL macros in evidence.metrics, the
same ones that estimate a baseline that does not fit), checked against llama.cpp's
loader log for every K on the RPC device (tests/engine/test_fit_engine.py). The
advice is the smallest K whose prediction plus a named margin fits: the fewest
experts moved off the device.

With an evidence store that holds a speed calibration of the same model file on this
host and this kind of device (a campaign whose sweep ran the speed probes at K = 0
and at K = all), each K also gets its predicted decode and prefill tokens/s, by the
store's speed model (the SQL macros `host_expert_share` and `rate_at_share`, as the
view `curve_prediction` applies them), and the advice is the fastest K that fits:
the highest predicted decode rate, the smaller K on a tie. Decode is the rate after
the calibration's shortest probe prompt, prefill the rate at its longest, as the
report's Choosing K page reads them.

`moe-evidence advise` prints it; a campaign's `n_cpu_moe = "auto"` uses the memory
advice alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb

from collector.config import DeviceSection
from collector.gguf_inspect import inspect_model
from common.errors import ConfigError, ModelError, StoreError
from common.sizes import MIB, mib, parse_size
from evidence.current_schema import present_as_current
from evidence.metrics import MACROS, create_views, predicted_device_memory
from evidence.store import open_store, schema_version

DeviceKind = Literal["gpu", "rpc"]

# llama.cpp's default micro-batch (-ub), the worst case the compute buffer is sized for.
DEFAULT_UBATCH = 512
# What stays free on a CUDA card beyond the buffers: its context and the allocator's
# slack. llama.cpp's own `--fit` keeps 1024 MiB free by default; so do we.
GPU_MARGIN = 1024 * MIB
# On the RPC device the rpc-server's own working memory (1.2-2.2 MiB measured,
# collector.device_limit) comes out of the size: 2 % of it, at least 2.5 MiB.
RPC_MARGIN_SHARE = 0.02
RPC_MARGIN_MIN = int(2.5 * MIB)


@dataclass(frozen=True)
class FitRow:
    """One K: what the device would hold, and whether it fits with the margin."""

    k: int
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    device_bytes: int
    fits: bool
    # Predicted tokens/s (the speed calibration's); None without one.
    decode_tps: float | None = None
    prefill_tps: float | None = None


@dataclass(frozen=True)
class ProbeEnds:
    """One probe and measure at the two ends of a campaign's curve: seconds per token
    with no expert tensor in CPU memory (K = 0) and with all of them there."""

    probe: str  # the probe's test id, e.g. prefill-128
    prompt_tokens: float | None  # the mean prompt the server processed
    seconds_none: float
    seconds_all: float

    def to_json(self) -> dict[str, Any]:
        return {
            "probe": self.probe,
            "prompt_tokens": self.prompt_tokens,
            "seconds_per_token_k0": self.seconds_none,
            "seconds_per_token_all": self.seconds_all,
        }


@dataclass(frozen=True)
class SpeedCalibration:
    """Where the predicted speeds come from: a campaign of the same model file on this
    host and kind of device whose speed probes ran at K = 0 and at K = all."""

    store: str
    campaign_id: str
    started_utc: datetime
    device: DeviceKind
    decode: ProbeEnds  # decode after the shortest probe prompt
    prefill: ProbeEnds  # prefill of the longest probe prompt

    def to_json(self) -> dict[str, Any]:
        return {
            "store": self.store,
            "campaign_id": self.campaign_id,
            "campaign_started_utc": self.started_utc.isoformat(),
            "device": self.device,
            "decode": self.decode.to_json(),
            "prefill": self.prefill.to_json(),
        }


@dataclass(frozen=True)
class Advice:
    model: str
    path: str
    device: DeviceKind
    device_memory_bytes: int
    margin_bytes: int
    n_ctx: int
    n_ubatch: int
    moe_blocks: int  # K at which every expert is in CPU memory (= --cpu-moe)
    rows: tuple[FitRow, ...]
    recommended_k: int | None
    speed: SpeedCalibration | None = None
    # The one line that says why there is no speed column (with --db only).
    speed_note: str | None = None

    @property
    def by_speed(self) -> bool:
        """Whether the recommendation is the fastest fitting K (else the fewest experts)."""
        return _timed(self.rows)

    def flags(self, k: int) -> list[str]:
        """The offload flag for K, as llama-server and Shimmy 1.7.0 both spell it."""
        if k == 0:
            return []
        return ["--cpu-moe"] if k >= self.moe_blocks else ["--n-cpu-moe", str(k)]

    def to_json(self) -> dict[str, Any]:
        """`advise --json`: the rows, the recommendation and the margin, sizes in bytes."""
        return {
            "model": self.model,
            "device": self.device,
            "device_memory_bytes": self.device_memory_bytes,
            "margin_bytes": self.margin_bytes,
            "n_ctx": self.n_ctx,
            "n_ubatch": self.n_ubatch,
            "moe_blocks": self.moe_blocks,
            "rows": [asdict(r) for r in self.rows],
            "recommended_k": self.recommended_k,
            "speed_calibration": None if self.speed is None else self.speed.to_json(),
            "speed_note": self.speed_note,
        }


def default_margin(device: DeviceKind, device_memory: int) -> int:
    """The margin a prediction must leave free on `device` (see the constants)."""
    if device == "gpu":
        return GPU_MARGIN
    return max(RPC_MARGIN_MIN, int(device_memory * RPC_MARGIN_SHARE))


def advise(
    spec: Mapping[str, Any],
    device_memory: int,
    *,
    device: DeviceKind = "gpu",
    n_ctx: int | None = None,
    n_ubatch: int = DEFAULT_UBATCH,
    margin: int | None = None,
    speed: SpeedCalibration | None = None,
) -> Advice:
    """The device memory per K for `spec` (a model inspection, `ModelSpec.to_json()`,
    as the store keeps it) and the smallest K that fits `device_memory`; with `speed`,
    the predicted tokens/s per K and the fastest K that fits.

    Refuses (ConfigError) a dense model, a context the model was not trained for, and
    a file without the shapes the prediction needs."""
    where = Path(str(spec.get("path", "the model"))).name
    trained = spec.get("context_length")
    if not spec.get("expert_tensor_count") or not spec.get("moe_layers"):
        raise ConfigError(
            f"{where} has no expert tensors: it is a dense model, so --cpu-moe and "
            f"--n-cpu-moe move nothing and there is no K to choose"
        )
    # llama.cpp's own default (-c 0) is the context the model was trained for.
    ctx = n_ctx if n_ctx is not None else int(trained or 4096)
    if ctx < 1:
        raise ConfigError(f"--ctx {ctx}: give a context of at least 1 token")
    if trained and ctx > trained:
        raise ConfigError(
            f"--ctx {ctx}: {where} was trained for {trained} tokens (its context_length); "
            f"give at most that"
        )
    if spec.get("kv_elements_per_token") is None or spec.get("embedding_length") is None:
        raise ModelError(
            f"{where} does not give its attention shapes (embedding length, heads), so its "
            f"KV cache and compute buffer cannot be predicted"
        )
    blocks = max(int(b) for b in spec["moe_layers"]) + 1
    kept = default_margin(device, device_memory) if margin is None else margin
    predicted = predicted_device_memory(
        spec, ctx, n_ubatch, range(blocks + 1), op_offload=device == "gpu"
    )
    rates = predicted_speeds(spec, speed, blocks) if speed is not None else {}
    rows = []
    for k, weights, kv, compute in predicted:
        if weights is None or kv is None or compute is None:
            raise ModelError(f"{where}: the prediction for K = {k} is incomplete")
        total = weights + kv + compute
        decode, prefill = rates.get(k, (None, None))
        rows.append(
            FitRow(k, weights, kv, compute, total, total + kept <= device_memory, decode, prefill)
        )
    return Advice(
        model=str(spec.get("name") or where),
        path=str(spec.get("path", where)),
        device=device,
        device_memory_bytes=device_memory,
        margin_bytes=kept,
        n_ctx=ctx,
        n_ubatch=n_ubatch,
        moe_blocks=blocks,
        rows=tuple(rows),
        recommended_k=_recommended(rows),
        speed=speed,
    )


def _recommended(rows: Sequence[FitRow]) -> int | None:
    """The fastest fitting K (highest predicted decode rate; the smaller K on a tie)
    where every fitting K has a prediction, else the smallest fitting K."""
    fitting = [r for r in rows if r.fits]
    if not fitting:
        return None
    if _timed(rows):
        return max(fitting, key=lambda r: (r.decode_tps or 0.0, -r.k)).k
    return min(r.k for r in fitting)


def _timed(rows: Sequence[FitRow]) -> bool:
    """Whether some K fits and every K that fits has a predicted decode rate (an
    inspection without the per-block expert bytes predicts the ends alone)."""
    fitting = [r for r in rows if r.fits]
    return bool(fitting) and all(r.decode_tps is not None for r in fitting)


def predicted_speeds(
    spec: Mapping[str, Any], speed: SpeedCalibration, blocks: int
) -> dict[int, tuple[float | None, float | None]]:
    """K -> (decode, prefill) tokens/s for K = 0 to `blocks`: the store's speed model
    (`rate_at_share` at the model's `host_expert_share`), evaluated for a model
    inspection outside a store. K = `blocks` is asked as -1 (--cpu-moe, every expert
    tensor), the end the calibration measured. None where the inspection has no
    per-block split of the expert bytes."""
    con = duckdb.connect(":memory:")
    try:
        con.execute(MACROS)
        found = con.execute(
            """
            SELECT k, rate_at_share($dn, $da, host_expert_share(s, n)),
                      rate_at_share($pn, $pa, host_expert_share(s, n))
            FROM (SELECT $spec::JSON AS s),
                 (SELECT k, CASE WHEN k >= $blocks THEN -1 ELSE k END AS n
                  FROM range(0, $blocks + 1) AS t(k))
            ORDER BY k
            """,
            {
                "spec": json.dumps(spec),
                "blocks": blocks,
                "dn": speed.decode.seconds_none,
                "da": speed.decode.seconds_all,
                "pn": speed.prefill.seconds_none,
                "pa": speed.prefill.seconds_all,
            },
        ).fetchall()
    finally:
        con.close()

    def rate(value: Any) -> float | None:
        return None if value is None else float(value)

    return {int(k): (rate(d), rate(p)) for k, d, p in found}


def format_advice(advice: Advice) -> str:
    """The table and the recommendation `moe-evidence advise` prints."""
    lines = [
        f"{advice.model}: {advice.moe_blocks} blocks with experts; context "
        f"{advice.n_ctx} tokens, micro-batch {advice.n_ubatch}",
        f"device: {mib(advice.device_memory_bytes)} ({DEVICE_NAMES[advice.device]}); margin "
        f"{mib(advice.margin_bytes)}: K fits when its prediction + margin <= "
        f"{mib(advice.device_memory_bytes)}",
    ]
    speed = advice.speed
    if speed is not None:
        lines.append(
            f"speed: predicted from campaign {speed.campaign_id} "
            f"({speed.started_utc:%Y-%m-%d %H:%M} UTC) in {speed.store}, its runs at K = 0 "
            f"and K = all: decode after {_probe(speed.decode)}, prefill of {_probe(speed.prefill)}"
        )
    elif advice.speed_note is not None:
        lines.append(advice.speed_note)
    header = f"{'K':>4}  {'weights':>10}  {'KV cache':>10}  {'compute':>10}  {'device':>10}"
    if speed is not None:
        header += f"  {'decode':>9}  {'prefill':>9}"
    lines += ["", f"{header}  fits"]
    for r in advice.rows:
        note = " (= --cpu-moe)" if r.k == advice.moe_blocks else ""
        cells = (
            f"{r.k:>4}  {r.weights_bytes / MIB:>10.1f}  {r.kv_bytes / MIB:>10.1f}  "
            f"{r.compute_bytes / MIB:>10.1f}  {r.device_bytes / MIB:>10.1f}"
        )
        if speed is not None:
            cells += f"  {_rate(r.decode_tps):>9}  {_rate(r.prefill_tps):>9}"
        lines.append(f"{cells}  {'yes' if r.fits else 'no'}{note}")
    lines.append("(MiB; decode and prefill in tokens/s, predicted)" if speed else "(MiB)")
    k = advice.recommended_k
    if k is None:
        need = advice.rows[-1].device_bytes + advice.margin_bytes
        lines += [
            "",
            f"nothing fits: even with every expert in CPU memory the device needs "
            f"{mib(need)} with the margin; use a smaller context (--ctx) or a bigger device",
        ]
        return "\n".join(lines)
    row = advice.rows[k]
    spare = advice.device_memory_bytes - row.device_bytes
    flags = " ".join(advice.flags(k)) or "(no offload flag: everything fits)"
    why = (
        f"the fastest that fits: {_rate(row.decode_tps)} decode and "
        f"{_rate(row.prefill_tps)} prefill tokens/s predicted"
        if advice.by_speed
        else "the fewest experts in CPU memory that fit"
    )
    lines += [
        "",
        f"recommended: K = {k}, {why} ({mib(row.device_bytes)} predicted, {mib(spare)} left "
        f"of which the margin is {mib(advice.margin_bytes)})",
        f"  llama-server -m {advice.path} -ngl 99 -c {advice.n_ctx} -fit off {flags}",
        f"  shimmy serve --model-dirs {Path(advice.path).parent} {flags}",
    ]
    return "\n".join(lines)


DEVICE_NAMES: dict[str, str] = {"gpu": "GPU", "rpc": "RPC device", "cpu": "CPU only"}


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _probe(ends: ProbeEnds) -> str:
    tokens = "" if ends.prompt_tokens is None else f"{ends.prompt_tokens:.0f}-token "
    return f"the {tokens}probe prompt ({ends.probe})"


def advise_command(
    model: Path | None,
    device_memory: str,
    *,
    device: DeviceKind | None,
    n_ctx: int | None,
    margin: str | None,
    as_json: bool,
    db: Path | None = None,
) -> str:
    """What `moe-evidence advise` prints. Without --model: the embedded model on the RPC
    device, as the default campaign runs it. With `db`, the speed columns from its
    calibration, or the one line that says how to get one."""
    try:
        memory = parse_size(device_memory)
        kept = parse_size(margin) if margin is not None else None
    except ValueError as exc:
        raise ConfigError(f"--device-memory / --margin: {exc}") from exc
    if model is None:
        from collector.defaults import EMBEDDED_CONTEXT
        from collector.embedded import ensure_embedded_model

        model, device, n_ctx = ensure_embedded_model(), device or "rpc", n_ctx or EMBEDDED_CONTEXT
    if model.is_dir():
        raise ModelError(f"{model} is a directory; pass the .gguf model file itself")
    spec = inspect_model(model).to_json()
    kind: DeviceKind = device or "gpu"
    found = None if db is None else speed_calibration(db, str(spec["sha256"]), kind)
    advice = advise(
        spec,
        memory,
        device=kind,
        n_ctx=n_ctx,
        margin=kept,
        speed=found if isinstance(found, SpeedCalibration) else None,
    )
    if isinstance(found, str):
        advice = replace(
            advice,
            speed_note=(
                f"no speed calibration for {advice.model} on this host's "
                f"{DEVICE_NAMES[kind]} in {db} ({found}): run `nox -s collect` (the default "
                f"campaign sweeps K with speed probes) or a campaign of this model with "
                f"[sweep] prompt_tokens = [...]; speed columns left out"
            ),
        )
    return json.dumps(advice.to_json(), indent=2) if as_json else format_advice(advice)


# The kind of device a campaign offloaded to: the RPC device where its server runs had
# one; else a GPU where its host had one NVML could see, unless the loader logs of the
# runs that loaded put no buffer on any device (an engine built for the CPU only);
# else the CPU only. Attached servers leave no loader log: their host decides.
_CAMPAIGN_DEVICE = """
SELECT c.campaign_id, m.model_id, c.started_utc, c.host_id = $host AS here,
       CASE WHEN bool_or(json_extract_string(s.device, '$.kind') = 'rpc') THEN 'rpc'
            WHEN any_value(h.gpu_status) = 'ok'
                 AND coalesce(json_array_length(any_value(h.gpus)), 0) > 0
                 AND NOT (count(s.log_summary) FILTER (WHERE s.status = 'stopped') > 0
                          AND count(TRY_CAST(json_extract(s.log_summary, '$.gpu_total_mib')
                                             AS DOUBLE)) FILTER (WHERE s.status = 'stopped') = 0)
            THEN 'gpu'
            ELSE 'cpu' END AS device
FROM models m
JOIN campaigns c USING (campaign_id)
LEFT JOIN hosts h USING (host_id)
LEFT JOIN server_runs s ON s.campaign_id = m.campaign_id AND s.model_id = m.model_id
WHERE m.sha256 = $sha AND c.status = 'complete'
GROUP BY ALL
ORDER BY c.started_utc DESC, m.model_id
"""

# Per probe and measure, the ends of one campaign's curve (`curve_prediction`), shortest
# prompt first: by the prompt the server processed, else (a server that counts no prompt
# tokens) by the probes' order, which is by their nominal length (collector.probes).
_CURVE_ENDS = """
SELECT p.measure, p.test_id, avg(p.prompt_tokens) AS prompt_tokens,
       any_value(p.time_none) AS time_none, any_value(p.time_all) AS time_all
FROM curve_prediction p JOIN tests t USING (campaign_id, test_id)
WHERE p.campaign_id = $campaign AND p.model_id = $model
GROUP BY p.measure, p.test_id
ORDER BY prompt_tokens NULLS LAST, any_value(t.ordinal), p.test_id
"""


def speed_calibration(db: Path, sha256: str, device: DeviceKind) -> SpeedCalibration | str:
    """The speed calibration in the store at `db` for the model file whose sha256 is
    `sha256` on this host (the collector's host_id) and this kind of device: the newest
    complete campaign of it whose speed probes ran at K = 0 and K = all, with a decode
    and a prefill rate at both. Else why there is none, in a few words. StoreError when
    `db` is no evidence store."""
    from collector.inventory import collect_host

    with open_store(db, read_only=True) as con:
        if schema_version(con) == 0:
            raise StoreError(
                f"{db} is a DuckDB file without an evidence store in it; pass the store "
                f"`moe-evidence collect` writes with --db"
            )
        # A store from an earlier collector: read as today's schema, what it lacks NULL.
        present_as_current(con)
        here = collect_host().host_id
        candidates = con.execute(_CAMPAIGN_DEVICE, {"sha": sha256, "host": here}).fetchall()
        if not candidates:
            return f"no complete campaign in it ran this model file (sha256 {sha256[:12]})"
        local = [c for c in candidates if c[3]]
        if not local:
            where = "another host" if len(candidates) == 1 else "other hosts"
            return f"{_its_campaigns(len(candidates))} ran on {where}"
        matching = [c for c in local if c[4] == device]
        if not matching:
            kinds = " / ".join(sorted({DEVICE_NAMES[str(c[4])] for c in local}))
            return f"{_its_campaigns(len(local))} on this host ran on the {kinds}"
        # The metric views only now: creating them is most of the time this takes.
        create_views(con)
        for campaign_id, model_id, started, *_ in matching:
            ends = con.execute(_CURVE_ENDS, {"campaign": campaign_id, "model": model_id}).fetchall()
            decode = [_ends(e) for e in ends if e[0] == "decode"]
            prefill = [_ends(e) for e in ends if e[0] == "prefill"]
            if decode and prefill:
                return SpeedCalibration(
                    str(db),
                    str(campaign_id),
                    started.astimezone(UTC),
                    device,
                    decode[0],
                    prefill[-1],
                )
    return (
        f"{_its_campaigns(len(matching))} here ran no speed probe at both ends, K = 0 and K = all"
    )


def _its_campaigns(n: int) -> str:
    return "its campaign of this model" if n == 1 else f"its {n} campaigns of this model"


def _ends(row: tuple[Any, ...]) -> ProbeEnds:
    _, test_id, tokens, none, every = row
    return ProbeEnds(
        str(test_id), None if tokens is None else float(tokens), float(none), float(every)
    )


def device_memory_in_force(device: DeviceSection) -> tuple[int, DeviceKind]:
    """The memory a campaign's device has: the size the RPC device is held to, else a
    GPU's free memory now (NVML, the first GPU: llama.cpp fills it first)."""
    if device.kind == "rpc":
        if device.memory is None:
            raise ConfigError(
                'n_cpu_moe = "auto" on the RPC device needs its size: set [device] memory '
                "(or --device-memory)"
            )
        return device.memory, "rpc"
    from collector.nvml import Nvml

    nv = Nvml()
    try:
        gpus = nv.devices()
    finally:
        nv.close()
    if not gpus or gpus[0].memory_free_bytes is None:
        raise ConfigError(
            f'n_cpu_moe = "auto" needs the device memory: no GPU answered NVML '
            f'({nv.reason or "none found"}); set [device] kind = "rpc" and memory'
        )
    return gpus[0].memory_free_bytes, "gpu"


def auto_k(spec: Mapping[str, Any], device: DeviceSection, server_argv: list[str]) -> int:
    """The K a configuration with `n_cpu_moe = "auto"` runs: the advice for the device
    memory in force at the context and micro-batch the server command asks for; every
    MoE block when nothing fits (the load then shows it does not fit, as evidence)."""
    memory, kind = device_memory_in_force(device)
    advice = advise(
        spec,
        memory,
        device=kind,
        n_ctx=_flag_int(server_argv, "-c", "--ctx-size"),
        n_ubatch=_flag_int(server_argv, "-ub", "--ubatch-size") or DEFAULT_UBATCH,
    )
    return advice.moe_blocks if advice.recommended_k is None else advice.recommended_k


def _flag_int(argv: list[str], short: str, long: str) -> int | None:
    """The integer after `short` or `long` in a command line (the store's argv_value)."""
    for i, part in enumerate(argv[:-1]):
        if part in (short, long):
            try:
                return int(argv[i + 1])
            except ValueError:
                return None
    return None
