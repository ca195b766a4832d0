"""What the shown runs could and could not show, in the reader's words.

Generated from the store, never hand-written: the device the configurations
offloaded to (a GPU measured through NVML, llama.cpp's RPC device, or none),
the profile (a capped smoke run), and the model. The Summary puts these lines
directly under the answer, because they decide how to read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from report.context.common import as_dict, as_list
from report.queries import rows

_LOOPBACK = ("127.", "localhost", "[::1]", "::1")


@dataclass(frozen=True)
class ScopeLine:
    topic: str  # device | profile | model
    text: str


def device_line(con: duckdb.DuckDBPyConnection) -> ScopeLine:
    """Which device stood in for "the GPU" in the shown server runs."""
    runs = rows(
        con,
        """
        SELECT DISTINCT r.device, h.gpu_status, h.gpus
        FROM sel_runs r JOIN campaigns c USING (campaign_id) JOIN hosts h USING (host_id)
        WHERE r.mode = 'launch'
        """,
    )
    devices = [as_dict(r["device"]) for r in runs]
    rpc = [d for d in devices if d.get("kind") == "rpc"]
    if rpc:
        servers = [s for d in rpc for s in as_list(d.get("rpc_servers")) if isinstance(s, dict)]
        local = all(str(s.get("endpoint", "")).startswith(_LOOPBACK) for s in servers)
        threads = sorted({int(s["threads"]) for s in servers if s.get("threads")})
        where = (
            "on this host"
            if local
            else "on " + ", ".join(sorted({str(s.get("endpoint")) for s in servers}))
        )
        threads_text = f", {'/'.join(map(str, threads))} thread(s)" if threads else ""
        link = (
            "loopback TCP, not PCIe, and it computes on this host's CPU, so the speed cost "
            "is indicative only."
            if local
            else "TCP over the network, not PCIe."
        )
        text = (
            f"Device: llama.cpp's RPC device {where}: a second process (ggml-rpc-server"
            f"{threads_text}) stands in for the GPU; its memory is what a GPU would hold, "
            f"measured as that process's resident memory. Its link is {link}"
        )
        return ScopeLine("device", text)
    gpus = [g for r in runs if r["gpu_status"] == "ok" for g in as_list(r["gpus"])]
    if gpus:
        names = sorted({str(g.get("name", "NVIDIA GPU")) for g in gpus if isinstance(g, dict)})
        return ScopeLine(
            "device",
            f"Device: {', '.join(names)}, measured through NVML (device memory in use).",
        )
    if not runs:
        return ScopeLine(
            "device",
            "Device: unknown: the server was attached, not launched, so this tool did not see "
            "where the model's tensors were placed.",
        )
    return ScopeLine(
        "device",
        "Device: none. This host has no GPU and no stand-in device was used: both "
        "configurations keep every weight in system memory, so these runs prove the pipeline "
        "and the tensor placement, not a VRAM saving or its speed cost.",
    )
