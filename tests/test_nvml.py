"""The GPU seam, against a fake `pynvml` module.

CI has no NVIDIA GPU, so these replace the narrowest seam there is: the NVML
functions themselves. Everything above them (attribution of GPU memory to the
server's processes, units, absence handling, the host inventory, the
telemetry sample) is our real code.
"""

from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any

import psutil
import pytest

from collector.inventory import collect_host
from collector.nvml import Nvml
from collector.telemetry import _sample

GIB = 1 << 30


class NVMLError(Exception):
    pass


@dataclass
class _Mem:
    total: int
    used: int
    free: int


@dataclass
class _Util:
    gpu: int
    memory: int


@dataclass
class _Proc:
    pid: int
    usedGpuMemory: int | None


def fake_nvml(devices: list[dict[str, Any]], fail_init: bool = False) -> types.ModuleType:
    """A module with the pynvml functions the tool calls, over `devices`."""
    mod = types.ModuleType("pynvml")
    state = {"shutdown": False}

    def init() -> None:
        if fail_init:
            raise NVMLError("NVML Shared Library Not Found")

    mod.nvmlInit = init  # type: ignore[attr-defined]
    mod.nvmlShutdown = lambda: state.update(shutdown=True)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetCount = lambda: len(devices)  # type: ignore[attr-defined]
    mod.nvmlDeviceGetHandleByIndex = lambda i: devices[i]  # type: ignore[attr-defined]
    mod.nvmlSystemGetDriverVersion = lambda: b"580.159.03"  # type: ignore[attr-defined]
    mod.nvmlSystemGetCudaDriverVersion = lambda: 13000  # type: ignore[attr-defined]
    mod.nvmlDeviceGetName = lambda h: h["name"].encode()  # type: ignore[attr-defined]
    mod.nvmlDeviceGetUUID = lambda h: h["uuid"]  # type: ignore[attr-defined]
    mod.nvmlDeviceGetMemoryInfo = (  # type: ignore[attr-defined]
        lambda h: _Mem(h["total"], h["used"], h["total"] - h["used"])
    )
    mod.nvmlDeviceGetUtilizationRates = lambda h: _Util(h["util"], 0)  # type: ignore[attr-defined]

    def procs(h: dict[str, Any]) -> list[_Proc]:
        if h.get("procs_error"):
            raise NVMLError("Not Supported")
        return [_Proc(pid, mem) for pid, mem in h["procs"]]

    mod.nvmlDeviceGetComputeRunningProcesses = procs  # type: ignore[attr-defined]
    mod.state = state  # type: ignore[attr-defined]
    return mod


H200 = {
    "name": "NVIDIA H200",
    "uuid": "GPU-1234",
    "total": 141 * GIB,
    "used": 9 * GIB,
    "util": 40,
    "procs": [(100, 6 * GIB), (200, 2 * GIB)],
}


def test_devices_and_driver() -> None:
    nv = Nvml(fake_nvml([H200]))
    assert nv.available and nv.reason == ""
    assert (nv.driver, nv.cuda) == ("580.159.03", "13.0")
    (dev,) = nv.devices()
    assert dev.name == "NVIDIA H200" and dev.memory_total_bytes == 141 * GIB
    # The device memory in force at a server start: what is free then, beside the total.
    assert dev.memory_free_bytes == 132 * GIB
    assert dev.uuid_hash != "GPU-1234" and len(dev.uuid_hash) == 16  # hashed, not stored raw


def test_sample_attributes_memory_to_the_server_tree() -> None:
    other = dict(H200, uuid="GPU-5678", used=3 * GIB, util=10, procs=[(100, 1 * GIB)])
    nv = Nvml(fake_nvml([H200, other]))
    sample = nv.sample({100, 101})
    assert sample is not None
    assert sample.mem_used_bytes == 12 * GIB  # device-wide, both devices
    assert sample.proc_mem_bytes == 7 * GIB  # only PIDs 100/101, on both devices
    assert sample.util_percent == pytest.approx(25.0)


def test_unattributable_process_memory_is_none_not_zero() -> None:
    nv = Nvml(fake_nvml([dict(H200, procs_error=True)]))
    sample = nv.sample({100})
    assert sample is not None and sample.proc_mem_bytes is None
    assert sample.mem_used_bytes == 9 * GIB


def test_absent_driver_is_a_recorded_fact() -> None:
    nv = Nvml(fake_nvml([], fail_init=True))
    assert not nv.available
    assert "NVML Shared Library Not Found" in nv.reason
    assert nv.sample({1}) is None and nv.devices() == []


def test_no_gpu_found() -> None:
    nv = Nvml(fake_nvml([]))
    assert not nv.available and nv.reason == "NVML found no NVIDIA GPU"


def test_close_shuts_nvml_down() -> None:
    mod = fake_nvml([H200])
    nv = Nvml(mod)
    nv.close()
    assert mod.state["shutdown"] and not nv.available  # type: ignore[attr-defined]


def test_host_inventory_with_gpu() -> None:
    host = collect_host(Nvml(fake_nvml([H200])))
    assert host.facts["gpu_status"] == "ok"
    assert host.facts["gpus"][0]["name"] == "NVIDIA H200"
    assert host.facts["gpu_driver"] == "580.159.03"
    without = collect_host(Nvml(fake_nvml([], fail_init=True)))
    assert without.host_id != host.host_id  # the GPU is part of the machine's identity
    assert without.facts["gpus"] == [] and "NVML" in without.facts["gpu_status"]


def test_telemetry_sample_carries_gpu_figures() -> None:
    me = psutil.Process()
    nv = Nvml(fake_nvml([dict(H200, procs=[(me.pid, 5 * GIB)])]))
    sample = _sample({me.pid: me}, [], nv, watching=True)
    assert sample.gpu_mem_used_bytes == 9 * GIB
    assert sample.gpu_proc_mem_bytes == 5 * GIB
    assert sample.rss_bytes is not None and sample.rss_bytes > 0
    assert sample.proc_count == 1


def test_telemetry_sample_without_gpu() -> None:
    me = psutil.Process()
    sample = _sample({me.pid: me}, [], Nvml(fake_nvml([], fail_init=True)), watching=True)
    assert sample.gpu_mem_used_bytes is None and sample.gpu_proc_mem_bytes is None
