"""A synthetic evidence store: every table filled, at any size, deterministically.

It exists to time and test the build (`nox -s build` must finish in under a
minute on 10,000 requests and 1,000,000 chunks) and to exercise every page:
GPU and CPU-only hosts, a `--n-cpu-moe` sweep, timeouts, scores, gates, human
reviews, and hostile model output (`<script>`, Markdown and Jinja syntax) that
the site must show as text. Every campaign it writes is named SYNTHETIC so no
page built from it can be mistaken for a measurement.

Usage: `python -m benchmarks.synthetic data/synthetic.duckdb --requests 10000 --chunks 1000000`.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa

from collector.protocol import PROTOCOL, ProtocolTest
from collector.recording import insert_protocol
from evidence.store import open_store
from evidence.writer import TELEMETRY_SCHEMA, Transaction, insert_arrow, insert_row, to_json
from scoring.store import judge_campaign

MIB = 1 << 20
GIB = 1 << 30
NS = 1_000_000_000
_EPOCH = datetime(2025, 1, 6, 9, 0, tzinfo=UTC)

# Model output the site must display as inert text: HTML, Markdown, Jinja,
# snippet includes, attribute lists, placeholders and merge-conflict markers.
HOSTILE_OUTPUTS: tuple[str, ...] = (
    "<script>window.__pwned = 1; console.error('xss')</script> Hello! I am fine.",
    '<img src=x onerror="window.__pwned = 2"> {{ 7 * 7 }} {% raw %}raw{% endraw %}',
    "</pre></details><script>window.__pwned = 3</script> | col | --- | [x](javascript:alert(1))",
    '--8<-- "/etc/passwd"\n{: onclick="window.__pwned = 4" }\n# TODO XX X.X None NaN\n'
    "<<<<<<< HEAD\n=======\n>>>>>>> branch\n",
)

_VOCAB = tuple(
    " ".join(
        (
            "the model streams each token as soon as the expert weights are read from memory",
            "and binary search halves the interval until the target is found while quicksort",
            "partitions around a pivot and bubble sort swaps neighbours renewable energy lowers",
            "emissions but storage remains a challenge the library API exposes books members",
            "and loans through resources with pagination filters and errors the story follows",
            "an assistant that learns what joy and grief feel like pour the five gallon jug",
            "into the three gallon jug",
        )
    ).split(" ")
)

_CODE_LEAD = (
    "```python\ndef factorial(n):\n    if n < 0:\n        return None\n    result = 1\n"
    "    for i in range(2, n + 1):\n        result *= i\n    return result\n```\n"
)


@dataclass(frozen=True)
class ModelPreset:
    """The shape of one synthetic model (sizes, speeds, expectations)."""

    label: str
    name: str
    architecture: str
    parameter_count: int
    block_count: int
    context_length: int
    expert_count: int
    expert_used_count: int
    expert_shared_count: int | None
    file_bytes: int
    expert_share: float  # expert tensor bytes / all tensor bytes
    baseline_tps: float
    offload_tps: float
    expected_vram_saved_pct: float


# Shaped after the protocol's three models (and Shimmy 1.7.0's published
# figures), so the pages look like the real thing; the labels say synthetic.
PRESETS: tuple[ModelPreset, ...] = (
    ModelPreset(
        "deepseek-moe-16b-synthetic",
        "DeepSeek-MoE 16B (synthetic)",
        "deepseek",
        16_380_000_000,
        28,
        4096,
        64,
        6,
        2,
        10_400 * MIB,
        0.84,
        38.0,
        9.5,
        83.3,
    ),
    ModelPreset(
        "gpt-oss-20b-synthetic",
        "GPT-OSS 20B (synthetic)",
        "gpt-oss",
        20_910_000_000,
        24,
        131072,
        32,
        4,
        None,
        12_100 * MIB,
        0.72,
        46.9,
        6.8,
        71.5,
    ),
    ModelPreset(
        "phi-3.5-moe-synthetic",
        "Phi-3.5-MoE 41.9B (synthetic)",
        "phimoe",
        41_870_000_000,
        32,
        131072,
        16,
        2,
        None,
        25_300 * MIB,
        0.93,
        21.0,
        4.1,
        92.9,
    ),
)


@dataclass(frozen=True)
class SyntheticSpec:
    """What to generate. Counts are targets: requests and chunks are met exactly."""

    requests: int = 10_000
    chunks: int = 1_000_000
    models: int = 3
    gpu: bool = True
    sweep: tuple[int, ...] = (8, 16)
    scores: bool = True
    gates: bool = True
    reviews: bool = True
    perf: bool = False
    hostile: bool = True
    telemetry_hz: float = 10.0
    seed: int = 0
    name: str = "SYNTHETIC store (generated for build tests, not a measurement)"

    @classmethod
    def quick(cls, **changes: Any) -> SyntheticSpec:
        """Shaped like `nox -s collect -- --quick`: one model, 1 repeat, 32-token cap."""
        base: dict[str, Any] = {
            "requests": 36,
            "chunks": 600,
            "models": 1,
            "gpu": False,
            "sweep": (),
        }
        base.update(changes)
        return cls(**base)


@dataclass
class _Cell:
    model: int
    config: str
    n_cpu_moe: int | None
    test: ProtocolTest
    repeat: int
    stream: bool


@dataclass
class _Ids:
    rng: random.Random

    def new(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))


@dataclass
class _Tables:
    """Column lists for the bulk tables, turned into Arrow at the end."""

    requests: dict[str, list[Any]] = field(default_factory=dict)
    scores: dict[str, list[Any]] = field(default_factory=dict)

    @staticmethod
    def add(table: dict[str, list[Any]], row: dict[str, Any]) -> None:
        for key, value in row.items():
            table.setdefault(key, []).append(value)


def _configs(spec: SyntheticSpec) -> list[tuple[str, int | None]]:
    configs: list[tuple[str, int | None]] = [("baseline", None), ("cpu-moe", -1)]
    configs += [(f"n-cpu-moe-{k}", k) for k in spec.sweep]
    return configs


def _cells(spec: SyntheticSpec) -> list[_Cell]:
    """Enough protocol cells for `spec.requests`, in campaign order, then cut to size."""
    tests = PROTOCOL.tests
    sweep_tests = tests[:3]
    per_model_fixed = 2 * len(tests) + len(spec.sweep) * len(sweep_tests)
    per_model = max(1, spec.requests // max(1, spec.models))
    repeats = max(1, (per_model - per_model_fixed) // (2 * len(tests)))
    cells: list[_Cell] = []
    for m in range(spec.models):
        for config, k in _configs(spec):
            sweep = config.startswith("n-cpu-moe")
            chosen = sweep_tests if sweep else tests
            for r in range(1, (1 if sweep else repeats) + 1):
                cells += [_Cell(m, config, k, t, r, True) for t in chosen]
            if not sweep:
                cells += [_Cell(m, config, k, t, 1, False) for t in tests]
    if len(cells) < spec.requests:
        extra = spec.requests - len(cells)
        cells += [
            _Cell(0, "baseline", None, tests[i % len(tests)], repeats + 1 + i // len(tests), True)
            for i in range(extra)
        ]
    return cells[: spec.requests]


def _pieces(text: str) -> list[str]:
    """Split a lead text into token-sized pieces that join back to it exactly."""
    out: list[str] = []
    word = ""
    for ch in text:
        if ch in " \n" and word:
            out.append(word)
            word = ""
        word += ch
    if word:
        out.append(word)
    return out


def _chunk_counts(
    spec: SyntheticSpec, cells: list[_Cell], minimums: list[int], rng: np.random.Generator
) -> list[int]:
    """Content events per request, proportional to the test's budget, so that the
    store holds exactly `spec.chunks` chunks. A streamed request adds a role, a
    usage and a done event; a non-streamed one is a single chunk whatever its
    length."""
    streamed = [i for i, c in enumerate(cells) if c.stream]
    fixed = 3 * len(streamed) + (len(cells) - len(streamed))
    budget = max(spec.chunks - fixed, sum(minimums[i] for i in streamed))
    weights = np.array([min(cells[i].test.max_tokens, 1000) for i in streamed], dtype=np.float64)
    weights *= rng.uniform(0.7, 1.0, size=len(streamed))
    share = np.floor(weights / max(weights.sum(), 1.0) * budget) if streamed else weights
    counts = [max(1, minimums[i]) for i in range(len(cells))]
    for j, i in enumerate(streamed):
        counts[i] = max(counts[i], int(share[j]))
    # Non-streamed answers are as long as a streamed one of the same test.
    for i, cell in enumerate(cells):
        if not cell.stream:
            counts[i] = max(counts[i], min(cell.test.max_tokens, 1 + budget // max(len(cells), 1)))
    short = budget - sum(counts[i] for i in streamed)
    j = 0
    while short != 0 and streamed and j < 100 * len(streamed):
        i = streamed[j % len(streamed)]
        step = 1 if short > 0 else -1
        if counts[i] + step >= max(1, minimums[i]):
            counts[i] += step
            short -= step
        j += 1
    return counts


def generate(path: Path, spec: SyntheticSpec | None = None) -> str:
    """Write a synthetic campaign into the store at `path` (created if absent); return its id."""
    spec = spec or SyntheticSpec()
    ids = _Ids(random.Random(spec.seed))
    rng = np.random.default_rng(spec.seed)
    models = PRESETS[: max(1, min(spec.models, len(PRESETS)))]
    cells = [c for c in _cells(spec) if c.model < len(models)]
    with open_store(path) as con, Transaction(con):
        host_id = _write_host(con, spec, ids)
        campaign_id = ids.new()
        _write_campaign(con, spec, campaign_id, host_id, cells)
        model_ids = [_write_model(con, campaign_id, p, ids) for p in models]
        _write_runs_and_requests(con, spec, campaign_id, models, model_ids, cells, ids, rng)
        if spec.gates:
            # The real scorer's placement checks and gates, over the synthetic rows.
            judge_campaign(con, campaign_id)
        if spec.perf:
            _write_perf(con, host_id, ids)
    return campaign_id


def _write_host(con: Any, spec: SyntheticSpec, ids: _Ids) -> str:
    host_id = "synthetic-gpu-host" if spec.gpu else "synthetic-cpu-host"
    if con.execute("SELECT 1 FROM hosts WHERE host_id = ?", [host_id]).fetchone():
        return host_id
    gpus = (
        [
            {
                "index": 0,
                "name": "NVIDIA GeForce RTX 3090 (synthetic)",
                "memory_bytes": 24 * GIB,
                "uuid_hash": "5f1c0de3a9b2c4d1",
            }
        ]
        if spec.gpu
        else []
    )
    insert_row(
        con,
        "hosts",
        {
            "host_id": host_id,
            "hostname_hash": "0123456789abcdef",
            "cpu_model": "AMD Ryzen 9 5950X 16-Core Processor (synthetic)",
            "cpu_cores": 16,
            "cpu_threads": 32,
            "ram_bytes": 64 * GIB,
            "os": "Linux",
            "os_release": "6.1.0-28-amd64",
            "kernel": "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1",
            "machine": "x86_64",
            "gpus": to_json(gpus),
            "gpu_driver": "550.120" if spec.gpu else None,
            "cuda_version": "12.4" if spec.gpu else None,
            "gpu_status": "ok"
            if spec.gpu
            else "NVML: libnvidia-ml.so.1: cannot open shared object file",
        },
    )
    return host_id


def _write_campaign(
    con: Any, spec: SyntheticSpec, campaign_id: str, host_id: str, cells: list[_Cell]
) -> None:
    repeats = max((c.repeat for c in cells if c.config == "cpu-moe"), default=1)
    quick = spec.requests <= 64
    config = {
        "campaign": {
            "name": spec.name,
            "repeats": repeats,
            "temperature": 0.3,
            "seed": 42,
            "pause_s": 0.0 if quick else 5.0,
            "max_tokens_cap": 32 if quick else None,
        },
        "server": {
            "mode": "launch",
            "api": "openai-chat",
            "command": ["{llama_server}", "-m", "{model_path}", "--port", "{port}"],
        },
        "configurations": [{"label": c, "n_cpu_moe": k} for c, k in _configs(spec)],
        "gates": {"max_itl_p99_ms": 1000.0},
    }
    insert_row(
        con,
        "campaigns",
        {
            "campaign_id": campaign_id,
            "host_id": host_id,
            "name": spec.name,
            "release_label": "synthetic",
            "profile": "quick" if quick else "default",
            "protocol_version": PROTOCOL.version,
            "status": "complete",
            "started_utc": _EPOCH,
            "finished_utc": _EPOCH + timedelta(hours=6),
            "clock_origin_ns": 1_000 * NS,
            "clock_origin_utc": _EPOCH,
            "repeats": repeats,
            "temperature": 0.3,
            "seed": 42,
            "pause_s": 0.0 if quick else 5.0,
            "config": to_json(config),
            "command": to_json(["python", "-m", "benchmarks.synthetic", "(generated)"]),
            "tool_version": "0.1.0",
            "packages": to_json({"python": "3.11.2", "duckdb": "1.1.3", "moe-evidence": "0.1.0"}),
            "environment": to_json({"OMP_NUM_THREADS": "16"}),
            "engine": to_json(
                {
                    "llama_build": "b11434",
                    "cmake_flags": ["-DGGML_CUDA=ON"],
                    "sdist_sha256": "9" * 64,
                }
            ),
            "mem_bandwidth_bytes_per_s": 38.5e9,
        },
    )
    insert_protocol(
        con, campaign_id, lambda test: min(test.max_tokens, 32) if quick else test.max_tokens
    )


def _moe_layers(p: ModelPreset) -> list[int]:
    # DeepSeek-MoE's first block is dense; the others are MoE in every block.
    return list(range(1 if p.architecture == "deepseek" else 0, p.block_count))


def _expert_tensors(p: ModelPreset) -> list[str]:
    return [
        f"blk.{b}.ffn_{kind}_exps.weight" for b in _moe_layers(p) for kind in ("gate", "up", "down")
    ]


def _write_model(con: Any, campaign_id: str, p: ModelPreset, ids: _Ids) -> str:
    model_id = ids.new()
    total = int(p.file_bytes * 0.995)
    experts = int(total * p.expert_share)
    names = _expert_tensors(p)
    # What the GGUF header says, stored both in the spec and as columns of `models`.
    header = {
        "architecture": p.architecture,
        "name": p.name,
        "parameter_count": p.parameter_count,
        "block_count": p.block_count,
        "context_length": p.context_length,
        "expert_count": p.expert_count,
        "expert_used_count": p.expert_used_count,
        "expert_shared_count": p.expert_shared_count,
    }
    spec = {
        "path": f"models/{p.label}.gguf",
        **header,
        "file_bytes": p.file_bytes,
        "sha256": _fake_sha(p.label),
        "quantization_mix": {"Q4_K": 200, "Q6_K": 30, "F32": 120},
        "tensor_count": 350,
        "tensor_bytes_total": total,
        "expert_tensor_count": len(names),
        "expert_tensor_bytes": experts,
        "moe_layer_count": len(_moe_layers(p)),
        "moe_layers": _moe_layers(p),
        "expert_tensor_names": names,
        "expert_bytes_by_layer": [
            [layer, experts // len(_moe_layers(p))] for layer in _moe_layers(p)
        ],
        "weights_gpu_bytes_baseline": total,
        "weights_gpu_bytes_cpu_moe": total - experts,
        "predicted_vram_saved_pct": 100.0 * experts / total,
    }
    insert_row(
        con,
        "models",
        {
            "model_id": model_id,
            "campaign_id": campaign_id,
            "label": p.label,
            "path": spec["path"],
            "sha256": spec["sha256"],
            "file_bytes": p.file_bytes,
            **header,
            "tensor_bytes_total": total,
            "expert_tensor_count": len(names),
            "expert_tensor_bytes": experts,
            "expected_vram_saved_pct": p.expected_vram_saved_pct,
            "spec": to_json(spec),
        },
    )
    return model_id


def _fake_sha(label: str) -> str:
    import hashlib

    return hashlib.sha256(f"synthetic:{label}".encode()).hexdigest()


def _log_summary(p: ModelPreset, gpu: bool, k: int | None) -> dict[str, Any]:
    """A loader-log summary as collector.loader_log writes it (sizes in MiB)."""
    total_mib = p.file_bytes * 0.995 / MIB
    expert_mib = total_mib * p.expert_share
    layers = _moe_layers(p)
    on_cpu = layers if k == -1 else [b for b in layers if k is not None and b < k]
    cpu_experts = expert_mib * len(on_cpu) / len(layers)
    names = [n for n in _expert_tensors(p) if int(n.split(".")[1]) in set(on_cpu)]
    kv_mib = 384.0
    compute_mib = 300.0
    if gpu:
        buffers = {
            "CUDA0": {
                "model": round(total_mib - cpu_experts, 2),
                "kv": kv_mib,
                "compute": compute_mib,
            },
            "CPU_Mapped": {"model": round(cpu_experts + 166.0, 2)},
            "CUDA_Host": {"compute": 24.0, "output": 0.58},
        }
        gpu_total = round(total_mib - cpu_experts + kv_mib + compute_mib, 2)
    else:
        buffers = {
            "CPU_Mapped": {"model": round(total_mib, 2)},
            "CPU": {"kv": kv_mib, "compute": compute_mib, "output": 0.58},
        }
        gpu_total = None
    return {
        "expert_count": p.expert_count,
        "expert_used_count": p.expert_used_count,
        "expert_shared_count": p.expert_shared_count,
        "buffers": buffers,
        "gpu_total_mib": gpu_total,
        "cpu_mapped_mib": buffers["CPU_Mapped"]["model"],
        "overridden_tensor_count": len(names),
        "overridden_mib": round(cpu_experts, 2) if names else 0.0,
        "override_targets": ["CPU"] if names else [],
        "overridden_tensors": names,
        "overridden_layers": sorted(on_cpu),
        "layers_offloaded": p.block_count + 1 if gpu else 0,
        "layers_total": p.block_count + 1,
        "load_passes": 1,
    }


def _rates(p: ModelPreset, spec: SyntheticSpec, k: int | None) -> tuple[float, float]:
    """(decode tokens/s, TTFT ms) of a configuration: offloading more layers is slower."""
    if k is None or k == 0:
        return (p.baseline_tps if spec.gpu else p.offload_tps * 1.05), 85.0
    share = 1.0 if k == -1 else min(1.0, k / len(_moe_layers(p)))
    slow = p.offload_tps if spec.gpu else p.offload_tps * 0.98
    fast = p.baseline_tps if spec.gpu else p.offload_tps * 1.05
    return fast + (slow - fast) * share, 85.0 + 180.0 * share


def _write_runs_and_requests(
    con: Any,
    spec: SyntheticSpec,
    campaign_id: str,
    models: tuple[ModelPreset, ...],
    model_ids: list[str],
    cells: list[_Cell],
    ids: _Ids,
    rng: np.random.Generator,
) -> None:
    hostile_left = list(HOSTILE_OUTPUTS) if spec.hostile else []
    leads = [_lead(cell, hostile_left) for cell in cells]
    counts = _chunk_counts(spec, cells, [len(_pieces(lead)) for lead in leads], rng)
    clock = 1_000 * NS + 30 * NS
    tables = _Tables()
    chunk_parts: list[pa.Table] = []
    telemetry_parts: list[pa.Table] = []
    vocab = np.array(_VOCAB, dtype=object)
    # Group cells by server configuration, in order: one server run each.
    runs: dict[tuple[int, str], list[int]] = {}
    for i, cell in enumerate(cells):
        runs.setdefault((cell.model, cell.config), []).append(i)
    for (m, config), members in runs.items():
        p = models[m]
        k = cells[members[0]].n_cpu_moe
        run_id = ids.new()
        launch_ns = clock
        ready_ns = launch_ns + int((4.0 + p.file_bytes / GIB * 0.6) * NS)
        clock = ready_ns + 2 * NS
        tps, ttft_ms = _rates(p, spec, k)
        req_windows: list[tuple[int, int]] = []
        for i in members:
            cell = cells[i]
            request_id = ids.new()
            pieces = _pieces(leads[i])
            n = counts[i]
            words = vocab[rng.integers(0, len(vocab), size=max(0, n - len(pieces)))]
            texts = pieces + [" " + str(w) for w in words]
            sent = clock
            timeout = (
                config == "cpu-moe"
                and cell.test.test_id == "technical-documentation"
                and cell.repeat == 2
                and cell.stream
            )
            if cell.stream:
                first = sent + int(ttft_ms * rng.lognormal(0.0, 0.12) * 1e6)
                gaps = rng.lognormal(0.0, 0.18, size=n) / tps
                gaps *= 1.0 + 0.08 * np.arange(n) / max(n, 1)
                stalls = rng.random(n) < 0.003
                gaps[stalls] += rng.uniform(0.3, 0.9, size=int(stalls.sum()))
                gaps[0] = 0.0
                t_content = first + np.cumsum(gaps * NS).astype(np.int64)
                done = int(t_content[-1]) + 2_000_000
                times = [sent + 1_000_000, *[int(t) for t in t_content], done - 1_000_000, done]
                chunk_texts = ["", *texts, "", ""]
                kinds = ["role", *(["content"] * n), "usage", "done"]
                first_token: int | None = int(t_content[0])
            else:
                done = sent + int((ttft_ms / 1000 + n / tps) * NS)
                times, chunk_texts, kinds = [done], ["".join(texts)], ["content"]
                first_token = None
            status = "timeout" if timeout else "ok"
            finish = None if timeout else ("length" if n >= cell.test.max_tokens else "stop")
            error = "ReadTimeout: no data for 120 s" if timeout else None
            output = "".join(texts)
            server_tps = tps * float(rng.uniform(1.01, 1.04))
            tables.add(
                tables.requests,
                {
                    "request_id": request_id,
                    "server_run_id": run_id,
                    "campaign_id": campaign_id,
                    "test_id": cell.test.test_id,
                    "repeat": cell.repeat,
                    "stream": cell.stream,
                    "api": "openai-chat",
                    "prompt": cell.test.prompt,
                    "max_tokens": cell.test.max_tokens,
                    "temperature": 0.3,
                    "seed": 42,
                    "started_utc": _EPOCH + timedelta(seconds=(sent - 1_000 * NS) / NS),
                    "status": status,
                    "http_status": 200,
                    "error": error,
                    "finish_reason": finish,
                    "output_text": output,
                    "sent_ns": sent,
                    "first_token_ns": first_token,
                    "done_ns": done,
                    "usage_prompt_tokens": 12,
                    "usage_completion_tokens": None if timeout else n,
                    "server_timings": None
                    if timeout
                    else json.dumps({"predicted_n": n, "predicted_per_second": server_tps}),
                    "tokenized_output_tokens": n,
                    "event_count": len(times),
                },
            )
            chunk_parts.append(
                pa.table(
                    {
                        "request_id": pa.array([request_id] * len(times), pa.string()),
                        "seq": pa.array(range(len(times)), pa.int32()),
                        "t_ns": pa.array(times, pa.int64()),
                        "text": pa.array(chunk_texts, pa.string()),
                        "kind": pa.array(kinds, pa.string()),
                    }
                )
            )
            if spec.scores:
                _add_scores(tables, request_id, cell, output, timeout, config, rng)
            req_windows.append((sent, done))
            clock = done + (int(0.5 * NS) if spec.requests > 64 else int(0.05 * NS))
        stopped = clock + NS
        telemetry_parts.append(
            _telemetry(run_id, p, spec, k, launch_ns, ready_ns, stopped, req_windows, rng)
        )
        insert_row(
            con,
            "server_runs",
            {
                "server_run_id": run_id,
                "campaign_id": campaign_id,
                "model_id": model_ids[m],
                "config_label": config,
                "n_cpu_moe": k,
                "mode": "launch",
                "api": "openai-chat",
                "endpoint": "http://127.0.0.1:41873",
                "argv": to_json(_argv(p, k)),
                "version": "version: 11434 (7f3c2a1) built with cc (Debian 12.2.0-14) 12.2.0",
                "pid": 4242 + len(telemetry_parts),
                "started_utc": _EPOCH + timedelta(seconds=(launch_ns - 1_000 * NS) / NS),
                "launch_ns": launch_ns,
                "ready_ns": ready_ns,
                "load_ms": (ready_ns - launch_ns) / 1e6,
                "stopped_ns": stopped,
                "exit_code": -15,
                "status": "stopped",
                "log_text": f"(synthetic loader log for {p.label}, {config})",
                "log_summary": to_json(_log_summary(p, spec.gpu, k)),
                "gpu_before": to_json(
                    {"available": True, "mem_used_bytes": 412 * MIB}
                    if spec.gpu
                    else {"available": False, "reason": "libnvidia-ml.so.1 not found"}
                ),
            },
        )
        clock = stopped + 5 * NS
    insert_arrow(con, "requests", pa.table(tables.requests))
    insert_arrow(con, "chunks", pa.concat_tables(chunk_parts))
    insert_arrow(con, "telemetry", pa.concat_tables(telemetry_parts))
    if spec.scores and tables.scores:
        insert_arrow(con, "scores", pa.table(tables.scores))
    if spec.reviews:
        reviewed = tables.requests["request_id"][: min(6, len(tables.requests["request_id"]))]
        for j, request_id in enumerate(reviewed):
            insert_row(
                con,
                "reviews",
                {
                    "review_id": ids.new(),
                    "request_id": request_id,
                    "score": 4 + j % 2,
                    "note": "coherent <b>and</b> on topic" if j == 0 else None,
                    "reviewer": "synthetic reviewer",
                    "reviewed_utc": _EPOCH + timedelta(days=1),
                },
            )


def _lead(cell: _Cell, hostile_left: list[str]) -> str:
    """The fixed start of a request's output: hostile text, or code for the code test."""
    if hostile_left and cell.stream and cell.repeat == 1 and cell.config == "cpu-moe":
        return hostile_left.pop(0)
    return _CODE_LEAD if cell.test.test_id == "code-generation" else ""


def _argv(p: ModelPreset, k: int | None) -> list[str]:
    argv = ["llama-server", "-m", f"models/{p.label}.gguf", "--port", "41873", "-np", "1"]
    if k == -1:
        argv.append("--cpu-moe")
    elif k:
        argv += ["--n-cpu-moe", str(k)]
    return argv


def _add_scores(
    tables: _Tables,
    request_id: str,
    cell: _Cell,
    output: str,
    timeout: bool,
    config: str,
    rng: np.random.Generator,
) -> None:
    long = cell.test.category == "extended generation"
    repetition = float(rng.beta(1.2, 40.0 if not long else 25.0))
    check = 0.0 if timeout else float(rng.random() > 0.08)
    rows: list[tuple[str, float, dict[str, Any]]] = [
        ("repetition", repetition, {"ngram": 4}),
        ("loop", 0.0, {}),
        ("completed", 0.0 if timeout else 1.0, {}),
        ("check", check, {"criteria": cell.test.success_criteria}),
        ("check_coverage", float(rng.uniform(0.6, 1.0)), {}),
        ("quality", float(np.clip(np.round(rng.normal(4.1, 0.6)), 1, 5)), {"formula": "synthetic"}),
    ]
    if config != "baseline" and not timeout:
        exact = float(rng.random() < 0.3)
        rows += [
            ("same_seed_exact_match", exact, {}),
            ("same_seed_edit_similarity", 1.0 if exact else float(rng.uniform(0.2, 0.95)), {}),
            ("same_seed_prefix_words", float(rng.integers(0, 40)), {}),
        ]
    if cell.test.test_id == "code-generation":
        passed = 5 if check else 3
        rows[3] = (
            "check",
            check,
            {
                "function": "factorial",
                "passed_cases": passed,
                "cases": [{"args": [i], "passed": i < passed} for i in range(5)],
            },
        )
    for name, value, detail in rows:
        tables.add(
            tables.scores,
            {
                "request_id": request_id,
                "name": name,
                "value": value,
                "detail": json.dumps(detail),
                "scorer_version": "synthetic-1",
            },
        )


def _telemetry(
    run_id: str,
    p: ModelPreset,
    spec: SyntheticSpec,
    k: int | None,
    launch_ns: int,
    ready_ns: int,
    stopped_ns: int,
    windows: list[tuple[int, int]],
    rng: np.random.Generator,
) -> pa.Table:
    step = int(NS / spec.telemetry_hz)
    t = np.arange(launch_ns, stopped_ns, step, dtype=np.int64)
    n = len(t)
    summary = _log_summary(p, spec.gpu, k)
    gpu_mib = float(summary["gpu_total_mib"] or 0.0)
    loaded = np.clip((t - launch_ns) / max(ready_ns - launch_ns, 1), 0.0, 1.0)
    busy = np.zeros(n, dtype=bool)
    for start, end in windows:
        busy |= (t >= start) & (t <= end)
    host_mib = p.file_bytes / MIB - (gpu_mib if spec.gpu else 0.0) + 600.0
    rss = (300 * MIB + loaded * host_mib * MIB * (1.0 + 0.02 * busy)).astype(np.int64)
    cpu = np.where(busy, rng.normal(1450.0 if k else 180.0, 60.0, n), rng.normal(3.0, 1.0, n))
    columns: dict[str, npt.ArrayLike] = {
        "server_run_id": [run_id] * n,
        "t_ns": t,
        "proc_count": np.ones(n, dtype=np.int32),
        "rss_bytes": rss,
        "cpu_percent": np.clip(cpu, 0.0, None),
        "sys_mem_used_bytes": (rss + 6 * GIB).astype(np.int64),
        "sys_cpu_percent": np.clip(cpu / 32.0, 0.0, 100.0),
        # The collector's own share, as a real store has it (schema 8): with it every
        # sample has a host-load figure, so the build's per-request host load runs at
        # full size (a constant: no draw from `rng`, so the other columns stay as they were).
        "collector_cpu_percent": np.full(n, 1.0),
    }
    if spec.gpu:
        gpu_used = (412 * MIB + loaded * gpu_mib * MIB + busy * 48 * MIB).astype(np.int64)
        columns["gpu_mem_used_bytes"] = gpu_used
        columns["gpu_proc_mem_bytes"] = (gpu_used - 412 * MIB).astype(np.int64)
        columns["gpu_util_percent"] = np.where(busy, 35.0 if k else 92.0, 0.0)
    else:
        for name in ("gpu_mem_used_bytes", "gpu_proc_mem_bytes", "gpu_util_percent"):
            columns[name] = pa.nulls(n, TELEMETRY_SCHEMA.field(name).type)
    for name in ("device_rss_bytes", "device_cpu_percent"):
        columns[name] = pa.nulls(n, TELEMETRY_SCHEMA.field(name).type)
    return pa.table(
        {
            name: pa.array(columns[name], TELEMETRY_SCHEMA.field(name).type)
            for name in TELEMETRY_SCHEMA.names
        }
    )


def _write_perf(con: Any, host_id: str, ids: _Ids) -> None:
    run = ids.new()
    rows = [
        ("ttft_accuracy_ms", 0.42, "ms", "<= 1 ms", True),
        ("collector_overhead_pct", 0.8, "%", "<= 2 %", True),
        ("telemetry_interference_pct", 1.3, "%", "<= 3 %", True),
    ]
    for name, value, unit, target, passed in rows:
        insert_row(
            con,
            "perf_results",
            {
                "perf_run_id": run,
                "host_id": host_id,
                "measured_utc": _EPOCH + timedelta(days=2),
                "name": name,
                "value": value,
                "unit": unit,
                "target": target,
                "passed": passed,
                "detail": to_json({"repeats": 5}),
            },
        )


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.synthetic", description="Write a synthetic evidence store."
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--chunks", type=int, default=1_000_000)
    parser.add_argument("--quick", action="store_true", help="a store shaped like a --quick run")
    parser.add_argument("--no-gpu", action="store_true", help="a CPU-only host")
    args = parser.parse_args(argv)
    spec = (
        SyntheticSpec.quick(gpu=not args.no_gpu)
        if args.quick
        else SyntheticSpec(requests=args.requests, chunks=args.chunks, gpu=not args.no_gpu)
    )
    print(generate(args.path, spec))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
