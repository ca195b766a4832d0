"""What machine and software a campaign ran on.

No secrets and no personal data: the hostname and GPU UUIDs are stored only as
hash prefixes, and environment variables only from an allowlist.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import platform
import re
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from packaging.markers import Marker

from collector.nvml import Nvml
from common.files import file_sha256
from common.secrets import REDACTED

# Variables that change what the engine does and carry no secrets.
ENV_ALLOWLIST = (
    "CUDA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "GGML_CUDA_FORCE_MMQ",
    "GGML_CUDA_FORCE_CUBLAS",
    "GGML_CUDA_NO_PINNED",
    "GGML_VK_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_CORETYPE",
    "LLAMA_ARG_THREADS",
    "LLAMA_ARG_N_GPU_LAYERS",
    "LLAMA_ARG_CTX_SIZE",
)


@dataclass(frozen=True)
class Host:
    host_id: str
    facts: dict[str, Any]


def _cpu_model() -> str:
    if sys.platform.startswith("linux"):
        try:
            text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
            match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
            if match:
                return match.group(1).strip()
        except OSError:
            pass
    return platform.processor() or platform.machine() or "unknown"


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Python and every installed distribution, name -> version (the whole set, so a
    store says exactly what measured it)."""
    found: dict[str, str] = {"python": platform.python_version()}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name:
            found[_canonical(name)] = dist.version
    return dict(sorted(found.items()))


# The lock every nox session installs from (`-c constraints.txt`), at the checkout's root.
LOCK_FILE = Path(__file__).resolve().parents[1] / "constraints.txt"
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;]+)\s*(?:;\s*(.+))?$")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lock_inventory(installed: dict[str, str], lock: Path = LOCK_FILE) -> dict[str, Any] | None:
    """The lock file's sha256 and every installed package whose version differs from
    its pin (None when the tool runs outside a checkout that has the lock)."""
    if not lock.is_file():
        return None
    pins = {}
    for line in lock.read_text(encoding="utf-8").splitlines():
        match = _PIN.match(line.strip())
        # A universal lock pins some packages per platform or Python: keep the pin
        # whose environment marker holds here.
        if match and (match.group(3) is None or Marker(match.group(3)).evaluate()):
            pins[_canonical(match.group(1))] = match.group(2)
    differs = {
        name: {"locked": pinned, "installed": installed.get(name)}
        for name, pinned in sorted(pins.items())
        if name in installed and installed[name] != pinned
    }
    return {
        "file": lock.name,
        "sha256": file_sha256(lock),
        "pinned": len(pins),
        "differs": differs,
    }


def allowlisted_environment() -> dict[str, str]:
    return {k: os.environ[k] for k in ENV_ALLOWLIST if k in os.environ}


def redact_env(env: Mapping[str, str]) -> dict[str, str]:
    """Server environment as it may be stored: values kept for allowlisted names only
    (a config may pass a key, e.g. LLAMA_API_KEY, to the server this way)."""
    return {k: v if k in ENV_ALLOWLIST else REDACTED for k, v in env.items()}


def collect_host(nvml: Nvml | None = None) -> Host:
    """The host's identity facts; host_id is stable across campaigns on one box."""
    nv = nvml if nvml is not None else Nvml()
    gpus = [
        {
            "index": d.index,
            "name": d.name,
            "memory_bytes": d.memory_total_bytes,
            "uuid_hash": d.uuid_hash,
        }
        for d in nv.devices()
    ]
    facts: dict[str, Any] = {
        "hostname_hash": _hash(platform.node()),
        "cpu_model": _cpu_model(),
        "cpu_cores": psutil.cpu_count(logical=False),
        "cpu_threads": psutil.cpu_count(logical=True),
        "ram_bytes": int(psutil.virtual_memory().total),
        "os": platform.system(),
        "os_release": platform.release(),
        "kernel": platform.version(),
        "machine": platform.machine(),
        "gpus": gpus,
        "gpu_driver": nv.driver,
        "cuda_version": nv.cuda,
        "gpu_status": "ok" if nv.available else nv.reason,
    }
    identity = (
        "|".join(
            str(facts[k])
            for k in ("hostname_hash", "cpu_model", "cpu_threads", "ram_bytes", "machine")
        )
        + "|"
        + ",".join(d.uuid_hash for d in nv.devices())
    )
    if nvml is None:
        nv.close()
    return Host(host_id=_hash(identity), facts=facts)


def measure_memory_bandwidth(size_bytes: int = 256 * 1024 * 1024, rounds: int = 5) -> float:
    """Host memory bandwidth in bytes/s: best of `rounds` numpy copies of a
    `size_bytes` buffer, counting the bytes read plus the bytes written. It is
    the ceiling that decode speed is compared with (decode reads every active
    weight once per token)."""
    src = np.ones(size_bytes // 8, dtype=np.float64)
    dst = np.empty_like(src)
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.nbytes / best
