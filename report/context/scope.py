"""What the shown runs could and could not show, in the reader's words.

Generated from the store, never hand-written: the device the configurations
offloaded to (a GPU measured through NVML, llama.cpp's RPC device, or none),
the server that actually ran, the model, and the profile (a capped smoke run).
The Summary puts these lines directly under the answer, because they decide
how to read it.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from common.sizes import mib
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
        SELECT DISTINCT r.device, h.gpu_status, h.gpus, r.gpu_before
        FROM sel_runs r JOIN campaigns c USING (campaign_id) JOIN hosts h USING (host_id)
        WHERE r.mode = 'launch'
        """,
    )
    devices = [as_dict(r["device"]) for r in runs]
    rpc = [d for d in devices if d.get("kind") == "rpc"]
    sizes = sorted({int(d["memory_bytes"]) for d in rpc if d.get("memory_bytes")})
    if rpc and sizes:
        return ScopeLine(
            "device",
            f"Device: llama.cpp's RPC device limited to {' / '.join(map(mib, sizes))}, as a "
            f"GPU of that size: a second process (ggml-rpc-server) stands in for the GPU under "
            f"an address-space limit, so an allocation beyond the size fails as a CUDA "
            f"out-of-memory does (it admits buffers to within about 2 MiB of the size); a "
            f"configuration that does not fit is stored as such, and its memory estimated. "
            f"Its memory is measured as that process's resident memory; its link is loopback "
            f"TCP and it computes on this host's CPU, so the speed cost is indicative only.",
        )
    if rpc:
        servers = [s for d in rpc for s in as_list(d.get("rpc_servers")) if isinstance(s, dict)]
        local = all(str(s.get("endpoint", "")).startswith(_LOOPBACK) for s in servers)
        threads = sorted({int(s["threads"]) for s in servers if s.get("threads")})
        where = (
            "on this host"
            if local
            else "on " + ", ".join(sorted({str(s.get("endpoint")) for s in servers}))
        )
        threads_text = f" -t {'/'.join(map(str, threads))}" if threads else ""
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
            f"Device: {', '.join(names)}{_gpu_memory(runs)}, measured through NVML (device "
            "memory in use).",
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


def _gpu_memory(runs: list[dict[str, object]]) -> str:
    """ " (N MiB, M MiB free at the first start)": the device memory in force on a GPU,
    as NVML gave it before each server start."""
    starts = [as_list(as_dict(r["gpu_before"]).get("devices")) for r in runs]
    found = [[d for d in s if isinstance(d, dict)] for s in starts if s]
    if not found:
        return ""
    total = sum(int(d.get("memory_total_bytes") or 0) for d in found[0])
    free = [sum(int(d.get("memory_free_bytes") or 0) for d in s) for s in found]
    if not total:
        return ""
    text = f" ({mib(total)}"
    if all(free):
        text += f", {mib(min(free))} free at the fullest start"
    return text + ")"


def _basename(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def server_name(con: duckdb.DuckDBPyConnection) -> str:
    """The server that ran, as a reader knows it (for the intro and the scope line)."""
    runs = rows(con, "SELECT DISTINCT mode, argv, endpoint, api FROM sel_runs")
    names = set()
    for r in runs:
        if r["mode"] != "launch":
            names.add(f"a server attached at {r['endpoint']} ({r['api']} API)")
            continue
        program = _basename(str(as_list(r["argv"])[0])) if as_list(r["argv"]) else "?"
        if program.startswith("shimmy"):
            names.add("Shimmy")
        elif program.startswith("llama-server"):
            names.add("llama.cpp's llama-server")
        else:
            names.add(f"`{program}`")
    return " and ".join(sorted(names)) or "no server"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def server_line(con: duckdb.DuckDBPyConnection) -> ScopeLine:
    """Which server and which build ran, with what its binary says of itself."""
    name = server_name(con)
    engines = rows(
        con,
        "SELECT DISTINCT c.engine, r.version FROM sel_runs r JOIN campaigns c USING (campaign_id) "
        "WHERE r.mode = 'launch'",
    )
    builds = []
    for e in engines:
        engine = as_dict(e["engine"])
        version = " ".join(str(e["version"] or "").split())
        if engine:
            # Older stores name the build `llama_build` and carry no `engine` or `source`.
            label = " ".join(
                str(part)
                for part in (
                    engine.get("engine", "llama.cpp"),
                    engine.get("build") or engine.get("llama_build"),
                )
                if part
            )
            source = str(engine.get("source") or "").removeprefix("pypi:")
            sha = str(engine.get("sdist_sha256") or "")[:12]
            origin = " ".join(part for part in (source, f"(sha256 {sha}…)" if sha else "") if part)
            builds.append(
                f"{label}, built by this tool from the PyPI sdist"
                + (f" {origin}" if origin else "")
                + f'; the binary itself reports "{version or "no version"}"'
            )
        elif version:
            builds.append(f'its --version says "{version}"')
    text = f"Server: {name}" + (f" ({'; '.join(sorted(set(builds)))})" if builds else "") + "."
    if "Shimmy" not in name:
        text += (
            " Shimmy did not run: its own behaviour (it reloads the model for every request) "
            "is not in these figures."
        )
    return ScopeLine("server", text)


def model_line(con: duckdb.DuckDBPyConnection) -> ScopeLine:
    """The model(s), and whether they are the tool's own test model."""
    found = rows(
        con,
        "SELECT m.display, m.parameter_count, m.expert_count, m.expert_used_count, "
        "m.file_bytes, c.profile FROM sel_models m JOIN campaigns c USING (campaign_id) "
        "ORDER BY m.model_order",
    )
    parts = []
    for m in found:
        facts = []
        if m["parameter_count"]:
            facts.append(f"{m['parameter_count'] / 1e6:,.0f} M parameters")
        if m["expert_count"]:
            facts.append(f"{m['expert_count']} experts, {m['expert_used_count']} active per token")
        if m["file_bytes"]:
            facts.append(f"{m['file_bytes'] / 2**20:,.1f} MiB file")
        text = f"{m['display']} ({', '.join(facts)})" if facts else str(m["display"])
        if m["profile"] in ("default", "quick"):
            text += (
                ": the tool's own test model, SmolLM2-135M upcycled into a MoE (identical "
                "experts behind a random router); its outputs say nothing of a production "
                "model's quality, and its size little of a large model's speed"
            )
        parts.append(text)
    return ScopeLine("model", "Model: " + ("; ".join(parts) or "none") + ".")


def profile_line(con: duckdb.DuckDBPyConnection) -> ScopeLine:
    """The protocol as run: capped or not, how many repeats."""
    found = rows(
        con,
        "SELECT c.profile, c.repeats, min(t.max_tokens) AS lo, max(t.max_tokens) AS hi, "
        "bool_or(t.max_tokens < t.protocol_max_tokens) AS capped "
        "FROM campaigns c JOIN tests t USING (campaign_id) "
        "WHERE c.campaign_id IN (SELECT campaign_id FROM sel_campaigns) GROUP BY ALL",
    )
    texts = []
    for c in found:
        if c["capped"]:
            texts.append(
                f"{c['profile']} profile: outputs capped at {c['hi']} tokens, "
                f"{_count(c['repeats'], 'repeat')}: a smoke run; checks of whole answers, "
                "completion times and long-test speed are not measured"
            )
        else:
            texts.append(
                f"{c['profile']} profile: the protocol's budgets ({c['lo']} to {c['hi']} tokens), "
                f"{_count(c['repeats'], 'repeat')} of each test"
            )
    return ScopeLine("profile", "Protocol: " + ("; ".join(texts) or "none") + ".")


def scope_lines(con: duckdb.DuckDBPyConnection) -> tuple[ScopeLine, ...]:
    """Everything a reader must know before reading the answer, in that order."""
    return (device_line(con), server_line(con), model_line(con), profile_line(con))
