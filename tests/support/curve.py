"""A hand-made `--n-cpu-moe` curve: speed probes with known timings at chosen K.

For the curve's views (`curve_points`, `curve_prediction`), the Choosing K page and
`advise --db`: every figure they show follows from the rates given here.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from collector.probes import probe_id, probe_prompt
from evidence.writer import insert_row
from tests.support.stores import MS, StoreFactory

BLOCKS = 30
EXPERT_BYTES_PER_BLOCK = 4 * 1024 * 1024
# A model of 30 MoE blocks: 120 MiB of experts, 40 MiB of other weights.
SPEC: dict[str, Any] = {
    "block_count": BLOCKS,
    "moe_layer_count": BLOCKS,
    "expert_count": 4,
    "expert_used_count": 2,
    "tensor_bytes_total": BLOCKS * EXPERT_BYTES_PER_BLOCK + 40 * 1024 * 1024,
    "expert_tensor_bytes": BLOCKS * EXPERT_BYTES_PER_BLOCK,
    "expert_bytes_by_layer": [[b, EXPERT_BYTES_PER_BLOCK] for b in range(BLOCKS)],
}

# (prompt tokens, measure) -> rates (tokens/s), one per repeat; measure is "prefill"
# (from server timings) or "decode" (from the stream's event times).
Rates = Mapping[tuple[int, str], Sequence[float]]


def add_probe(
    store: StoreFactory,
    run_label: str,
    prompt_tokens: int,
    prefill_tps: float,
    decode_tps: float,
    repeat: int,
    decode_tokens: int = 9,
) -> str:
    """One probe request: `prompt_tokens` prefilled at `prefill_tps` (server timings),
    then `decode_tokens` tokens, one per event, at `decode_tps`."""
    prefill_ms = 1000 * prompt_tokens / prefill_tps
    first = int(prefill_ms * MS)
    gap = int(1e9 / decode_tps)
    chunks = [(first + i * gap, "w ") for i in range(decode_tokens)]
    return store.request(
        run_label,
        chunks,
        test_id=probe_id(prompt_tokens),
        repeat=repeat,
        usage_tokens=decode_tokens,
        timings={"prompt_n": prompt_tokens, "prompt_ms": prefill_ms},
        max_tokens=decode_tokens,
    )


def curve_store(
    store: StoreFactory,
    points: Mapping[int, Rates],
    spec: Mapping[str, Any] = SPEC,
) -> StoreFactory:
    """Probes at each K of `points` (K -> rates) in `store`'s campaign, with the
    model's `spec`, the probes in `tests`, and a loader log per run giving its device
    buffers (the GGUF bytes left on the device, in MiB)."""
    store.con.execute(
        "UPDATE models SET spec = ?, expert_tensor_bytes = ?, tensor_bytes_total = ?, "
        "expert_count = ?, expert_used_count = ?, block_count = ? WHERE model_id = ?",
        [
            json.dumps(dict(spec)),
            spec["expert_tensor_bytes"],
            spec["tensor_bytes_total"],
            spec["expert_count"],
            spec["expert_used_count"],
            spec["block_count"],
            store.model_id,
        ],
    )
    lengths = sorted({n for rates in points.values() for n, _ in rates})
    for i, n in enumerate(lengths):
        insert_row(
            store.con,
            "tests",
            {
                "campaign_id": store.campaign_id,
                "test_id": probe_id(n),
                "ordinal": 10 + i,
                "category": "speed probe",
                "prompt": probe_prompt(n),
                "max_tokens": 9,
                "protocol_max_tokens": 9,
                "success_criteria": "none: a speed probe",
            },
        )
    for k, rates in points.items():
        label = f"n-cpu-moe-{k}"
        run_id = store.server_run(label, n_cpu_moe=k)
        on_host = sum(b for block, b in spec["expert_bytes_by_layer"] if block < k)
        on_device = spec["tensor_bytes_total"] - on_host
        store.con.execute(
            "UPDATE server_runs SET log_summary = ? WHERE server_run_id = ?",
            [json.dumps({"gpu_total_mib": on_device / 2**20}), run_id],
        )
        for n in lengths:
            prefill, decode = rates[(n, "prefill")], rates[(n, "decode")]
            for repeat, (p, d) in enumerate(zip(prefill, decode, strict=True), start=1):
                add_probe(store, label, n, p, d, repeat)
    return store
