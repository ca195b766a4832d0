"""Which K fits: device memory per `--n-cpu-moe K`, predicted from the model file.

For every K from 0 (no expert in CPU memory) to all MoE blocks, the device holds the
GGUF weights left there, the KV cache for the context and the compute buffer of one
micro-batch; the formulas are the store's own (SQL macros in evidence.metrics, the
same ones that estimate a baseline that does not fit), checked against llama.cpp's
loader log for every K on the RPC device (tests/engine/test_fit_engine.py). The
advice is the smallest K whose prediction plus a named margin fits: the fewest
experts moved off the device, so the fastest configuration that loads.

`moe-evidence advise` prints it; a campaign's `n_cpu_moe = "auto"` uses it.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

from collector.config import DeviceSection
from collector.gguf_inspect import inspect_model
from common.errors import ConfigError, ModelError
from common.sizes import MIB, mib, parse_size
from evidence.metrics import predicted_device_memory

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
) -> Advice:
    """The device memory per K for `spec` (a model inspection, `ModelSpec.to_json()`,
    as the store keeps it) and the smallest K that fits `device_memory`.

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
    rows = []
    for k, weights, kv, compute in predicted:
        if weights is None or kv is None or compute is None:
            raise ModelError(f"{where}: the prediction for K = {k} is incomplete")
        total = weights + kv + compute
        rows.append(FitRow(k, weights, kv, compute, total, total + kept <= device_memory))
    fitting = [r.k for r in rows if r.fits]
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
        recommended_k=min(fitting) if fitting else None,
    )


def format_advice(advice: Advice) -> str:
    """The table and the recommendation `moe-evidence advise` prints."""
    device = "RPC device" if advice.device == "rpc" else "GPU"
    lines = [
        f"{advice.model}: {advice.moe_blocks} blocks with experts; context "
        f"{advice.n_ctx} tokens, micro-batch {advice.n_ubatch}",
        f"device: {mib(advice.device_memory_bytes)} ({device}); margin "
        f"{mib(advice.margin_bytes)}: K fits when its prediction + margin <= "
        f"{mib(advice.device_memory_bytes)}",
        "",
        f"{'K':>4}  {'weights':>10}  {'KV cache':>10}  {'compute':>10}  {'device':>10}  fits",
    ]
    for r in advice.rows:
        note = " (= --cpu-moe)" if r.k == advice.moe_blocks else ""
        lines.append(
            f"{r.k:>4}  {r.weights_bytes / MIB:>10.1f}  {r.kv_bytes / MIB:>10.1f}  "
            f"{r.compute_bytes / MIB:>10.1f}  {r.device_bytes / MIB:>10.1f}  "
            f"{'yes' if r.fits else 'no'}{note}"
        )
    lines.append("(MiB)")
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
    lines += [
        "",
        f"recommended: K = {k}, the fewest experts in CPU memory that fit "
        f"({mib(row.device_bytes)} predicted, {mib(spare)} left of which the margin is "
        f"{mib(advice.margin_bytes)})",
        f"  llama-server -m {advice.path} -ngl 99 -c {advice.n_ctx} -fit off {flags}",
        f"  shimmy serve --model-dirs {Path(advice.path).parent} {flags}",
    ]
    return "\n".join(lines)


def advise_command(
    model: Path | None,
    device_memory: str,
    *,
    device: DeviceKind | None,
    n_ctx: int | None,
    margin: str | None,
    as_json: bool,
) -> str:
    """What `moe-evidence advise` prints. Without --model: the embedded model on the RPC
    device, as the default campaign runs it."""
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
    advice = advise(
        inspect_model(model).to_json(), memory, device=device or "gpu", n_ctx=n_ctx, margin=kept
    )
    return json.dumps(advice.to_json(), indent=2) if as_json else format_advice(advice)


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
