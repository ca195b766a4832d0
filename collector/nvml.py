"""The GPU seam: every NVML call the tool makes goes through this module.

`nvidia-ml-py` (import name `pynvml`) is a thin ctypes binding; on a machine
without the NVIDIA driver `nvmlInit` fails with LibraryNotFound. That is a
fact to record ("no NVIDIA driver"), never an error. Tests replace the
`pynvml` module object with a fake exposing the same functions, because CI has
no NVIDIA GPU: that is the narrowest seam that still runs all of our logic.
"""

from __future__ import annotations

import contextlib
import hashlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any


@dataclass(frozen=True)
class GpuDevice:
    index: int
    name: str
    memory_total_bytes: int
    uuid_hash: str  # sha256 prefix of the device UUID: stable, not identifying
    # Free when asked (each server start asks): the device memory in force on a GPU.
    memory_free_bytes: int | None = None


@dataclass(frozen=True)
class GpuSample:
    mem_used_bytes: int  # all devices, device-wide
    proc_mem_bytes: int | None  # the watched processes; None when NVML cannot attribute
    util_percent: float | None


def _load_module() -> ModuleType | None:
    try:
        import pynvml
    except ImportError:
        return None
    module: ModuleType = pynvml
    return module


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class Nvml:
    """A handle on NVML, or on its absence (`available` False with a `reason`)."""

    def __init__(self, module: ModuleType | None = None) -> None:
        self._nv = module if module is not None else _load_module()
        self.available = False
        self.reason = "nvidia-ml-py is not installed"
        self.driver: str | None = None
        self.cuda: str | None = None
        self._handles: list[Any] = []
        if self._nv is None:
            return
        try:
            self._nv.nvmlInit()
        except Exception as exc:  # NVMLError subclasses, OSError from ctypes
            self.reason = f"NVML unavailable: {exc or type(exc).__name__} (no NVIDIA driver/GPU)"
            return
        try:
            count = int(self._nv.nvmlDeviceGetCount())
            self._handles = [self._nv.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self.driver = _text(self._nv.nvmlSystemGetDriverVersion())
            cuda = int(self._nv.nvmlSystemGetCudaDriverVersion())
            self.cuda = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        except Exception as exc:
            self.reason = f"NVML query failed: {exc}"
            return
        if not self._handles:
            self.reason = "NVML found no NVIDIA GPU"
            return
        self.available = True
        self.reason = ""

    def devices(self) -> list[GpuDevice]:
        out: list[GpuDevice] = []
        if not self.available or self._nv is None:
            return out
        for index, handle in enumerate(self._handles):
            memory = self._nv.nvmlDeviceGetMemoryInfo(handle)
            uuid = _text(self._nv.nvmlDeviceGetUUID(handle))
            out.append(
                GpuDevice(
                    index=index,
                    name=_text(self._nv.nvmlDeviceGetName(handle)),
                    memory_total_bytes=int(memory.total),
                    uuid_hash=hashlib.sha256(uuid.encode()).hexdigest()[:16],
                    memory_free_bytes=int(memory.free),
                )
            )
        return out

    def sample(self, pids: set[int]) -> GpuSample | None:
        """Device memory in use, memory of `pids`, and utilisation, over all devices."""
        if not self.available or self._nv is None:
            return None
        used = 0
        proc: int | None = 0
        util_total = 0.0
        util_n = 0
        for handle in self._handles:
            used += int(self._nv.nvmlDeviceGetMemoryInfo(handle).used)
            try:
                rate = self._nv.nvmlDeviceGetUtilizationRates(handle)
                util_total += float(rate.gpu)
                util_n += 1
            except Exception:
                pass
            if proc is not None:
                proc = self._proc_memory(handle, pids, proc)
        return GpuSample(used, proc, util_total / util_n if util_n else None)

    def _proc_memory(self, handle: Any, pids: set[int], acc: int) -> int | None:
        try:
            running = list(self._nv.nvmlDeviceGetComputeRunningProcesses(handle))  # type: ignore[union-attr]
        except Exception:
            return None
        for info in running:
            if int(info.pid) in pids and info.usedGpuMemory is not None:
                acc += int(info.usedGpuMemory)
        return acc

    def close(self) -> None:
        if self.available and self._nv is not None:
            with contextlib.suppress(Exception):
                self._nv.nvmlShutdown()
            self.available = False
