"""Parse llama.cpp model-loader logs (llama-server or Shimmy stdout/stderr).

Two formats are read:

* older logs without timestamps (Shimmy 1.7.0, llama.cpp b6686), one load;
* current llama-server `-lv 5` logs, where each line starts with a timestamp
  and a level letter (`0.00.035.905 I ...`). There a sizing pass with 0.00 MiB
  buffers precedes the real load, and every tensor-override line appears once
  per pass.

Buffers are taken from the last load in the log; overridden tensors are counted
once per name. The override lines are DEBUG-level in current llama.cpp, so the
server must run with `-lv 5` (or `--verbose`) for them to be there.

A server that loads the model for every request (Shimmy 1.7.0) repeats the
whole loader log per request. `LoadSplitter` says where each load begins and
ends (one definition, used here to split a saved log and by
`collector.log_watch` to stamp loads as they are written); each load is parsed
on its own and the summary says how many there were and which facts differ
between them.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from common.errors import LogParseError
from common.json_fields import json_fields
from evidence.llama_names import block_of, is_host_device

__all__ = [
    "BUFFER_KINDS",
    "LoadSplitter",
    "LoaderLogSummary",
    "format_summary",
    "loader_line",
    "parse_loader_log",
    "print_log_summary",
    "split_loads",
]

BUFFER_KINDS = ("model", "kv", "compute", "output")
# Kinds that occupy device memory for the whole run; `output` is host-side logits.
_GPU_TOTAL_KINDS = ("model", "kv", "compute")

# Bounded digit runs: a garbled line can never become a huge or infinite float.
_NUM = r"[0-9]{1,15}(?:\.[0-9]{1,6})?"
_INT = r"[0-9]{1,9}"
_FLAGS = re.ASCII

_LV5_PREFIX = re.compile(r"^\s*[0-9]+(?:\.[0-9]+){3}\s+[A-Z]\s", _FLAGS)
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]", _FLAGS)
_LOAD_START = re.compile(r"llama_model_loader: loaded meta data with", _FLAGS)
# Where a load's lines begin (before its metadata: the device it loads to) and end:
# b6686 ends a load with llama_context's "graph splits = N", b11434 with the
# scheduler's "graph: nodes = N, splits = M".
_LOAD_OPENER = re.compile(r"^llama_model_load_from_file_impl:", _FLAGS)
_LOAD_END = re.compile(
    r"llama_context: graph splits = [0-9]|sched_reserve: graph: nodes = [0-9]+, splits = [0-9]",
    _FLAGS,
)
# b11434's `--fit on` (its default) first sizes the model in a pass of its own
# (0.00 MiB buffers), then loads it for real: two passes, one load.
_FIT_BEGIN = re.compile(r"fitting params to device memory", _FLAGS)
_FIT_DONE = re.compile(r"\bcommon_fit_params: ", _FLAGS)
_BUFFER = re.compile(
    rf"\s(?P<dev>\S+)\s+(?P<kind>model|KV|compute|output)\s+buffer size\s*=\s*(?P<mib>{_NUM}) MiB",
    _FLAGS,
)
# llama.cpp before the `model` word was added: "llm_load_tensors: CUDA0 buffer size = ...".
_OLD_MODEL_BUFFER = re.compile(
    rf"load_tensors:\s+(?P<dev>\S+)\s+buffer size\s*=\s*(?P<mib>{_NUM}) MiB", _FLAGS
)
# Older builds print no size and spell it "overriden".
_OVERRIDE = re.compile(
    rf"\btensor\s+(?P<name>\S+)\s+(?:\((?P<mib>{_NUM})\s*MiB\s+\S+\)\s+)?"
    r"buffer type overrid{1,2}en to\s+(?P<target>\S+)",
    _FLAGS,
)
_OFFLOADED = re.compile(rf"offloaded (?P<done>{_INT})/(?P<total>{_INT}) layers to GPU", _FLAGS)
_PRINT_INFO = re.compile(
    r"(?:print_info|llm_load_print_meta):\s+(?P<key>[A-Za-z_][\w. ]*?)\s*=\s*(?P<value>.*?)\s*$",
    _FLAGS,
)
_KV_EXPERT = re.compile(
    rf"llama_model_loader: - kv\s+[0-9]+:\s+\S+\.(?P<key>expert_count|expert_used_count|"
    rf"expert_shared_count)\s+\S+\s+=\s+(?P<value>{_INT})\s*$",
    _FLAGS,
)
# The settings that change results, as the server reports them (not as we asked for them):
# llama_context's parameters, the thread counts, the KV cache's element types, and what
# `--fit` (b11434's default) did to the arguments.
_CONTEXT = re.compile(
    r"llama_context:\s+(?P<key>n_ctx|n_batch|n_ubatch|n_seq_max|flash_attn|kv_unified)\s*="
    r"\s*(?P<value>\S+)\s*$",
    _FLAGS,
)
_THREADS = re.compile(
    rf"system_info: n_threads = (?P<threads>{_INT}) \(n_threads_batch = (?P<batch>{_INT})\)",
    _FLAGS,
)
_KV_TYPES = re.compile(
    r"llama_kv_cache: size = .*\bK \((?P<k>[a-z0-9_]+)\):.*\bV \((?P<v>[a-z0-9_]+)\):", _FLAGS
)
_FIT = re.compile(r"\b(?:common_params_fit\w*|common_fit_params): (?P<text>.+?)\s*$", _FLAGS)
_FIT_LINES_KEPT = 12
# A buffer the device could not hold: ggml's allocators name the buffer type and the
# bytes ("failed to allocate RPC0[127.0.0.1:50052] buffer of size 246153216"); CUDA
# says it in MiB on a device index; llama.cpp then names the type alone ("unable to
# allocate CUDA0 buffer").
_ALLOC_FAILED = re.compile(
    rf"failed to allocate (?P<buft>\S+) buffer of size (?P<bytes>[0-9]{{1,18}})\b|"
    rf"allocating (?P<mib>{_NUM}) MiB on device (?P<cuda>{_INT}): cudaMalloc failed: "
    r"out of memory|"
    r"unable to allocate (?P<named>\S+) buffer\b",
    _FLAGS,
)
# Which of the load's allocations failed, from the message that follows ggml's.
_ALLOC_WHAT = (
    (re.compile(r"unable to allocate \S+ buffer|load_tensors:", _FLAGS), "model"),
    (re.compile(r"failed to allocate buffer for kv cache", _FLAGS), "kv"),
    (re.compile(r"failed to allocate compute|sched_reserve", _FLAGS), "compute"),
)
_PARAMS = re.compile(rf"^(?P<num>{_NUM})\s*(?P<unit>[KMBT])\b", _FLAGS)
_FILE_SIZE = re.compile(rf"^(?P<num>{_NUM})\s*(?P<unit>[KMGT]iB)\b", _FLAGS)

_PARAM_SCALE = {"K": 10**3, "M": 10**6, "B": 10**9, "T": 10**12}
_MIB_SCALE = {
    "KiB": Decimal(1) / 1024,
    "MiB": Decimal(1),
    "GiB": Decimal(1024),
    "TiB": Decimal(1024 * 1024),
}
_INFO_KEYS = {
    "n_expert": "expert_count",
    "n_expert_used": "expert_used_count",
    "n_expert_shared": "expert_shared_count",
}


@dataclass(frozen=True)
class LoaderLogSummary:
    """What a loader log says about one model load; sizes in MiB as printed."""

    expert_count: int | None
    expert_used_count: int | None
    expert_shared_count: int | None
    model_params_text: str | None
    model_params: float | None
    file_size_text: str | None
    file_size_mib: float | None
    # device -> kind (model, kv, compute, output) -> MiB, from the last load.
    buffers: Mapping[str, Mapping[str, float]]
    overridden_tensors: tuple[str, ...]
    overridden_mib: float
    override_targets: tuple[str, ...]
    layers_offloaded: int | None
    layers_total: int | None
    load_passes: int
    # What the server reports it runs with (n_ctx, n_batch, n_ubatch, n_seq_max, flash_attn,
    # kv_unified, threads, threads_batch, kv_type_k, kv_type_v), from the last load.
    settings: Mapping[str, str] = field(default_factory=dict)
    # `--fit`'s own lines (empty when it did not run, e.g. with `-fit off`).
    fit_lines: tuple[str, ...] = ()
    # How many times the log loads the model (one per request for Shimmy 1.7.0), and
    # what differs between those loads (buffers, overrides, settings): every figure
    # above is the last load's, which stands for all of them only when this is empty.
    loads: int = 1
    load_differences: tuple[str, ...] = ()
    # The first allocation the load could not make on a device (not host memory):
    # {"buffer": "RPC0[127.0.0.1:50052]", "device": "RPC0", "bytes": N or None,
    # "kind": "model" | "kv" | "compute" | None}; None when every allocation was made.
    # The device's own words for "does not fit".
    device_alloc_failure: Mapping[str, Any] | None = None

    def gpu_mib(self, kind: str) -> float | None:
        """One kind of buffer (model, kv, compute) summed over every device that is
        not host memory (CUDA0, RPC0[host:port], ...); None without such a device."""
        devices = [d for d in self.buffers if not is_host_device(d)]
        if not devices:
            return None
        return float(
            sum((Decimal(str(self.buffers[d].get(kind, 0.0))) for d in devices), Decimal(0))
        )

    def all_mib(self, kind: str) -> float | None:
        """One kind of buffer summed over every device, host memory included."""
        values = [kinds[kind] for kinds in self.buffers.values() if kind in kinds]
        if not values:
            return None
        return float(sum((Decimal(str(v)) for v in values), Decimal(0)))

    @property
    def gpu_total_mib(self) -> float | None:
        """Model + KV + compute buffers on every GPU device; None without a GPU device."""
        parts = [self.gpu_mib(kind) for kind in _GPU_TOTAL_KINDS]
        if parts[0] is None:
            return None
        return float(sum((Decimal(str(p)) for p in parts if p is not None), Decimal(0)))

    @property
    def cpu_mapped_mib(self) -> float | None:
        """The memory-mapped model weights (`CPU_Mapped`), None when not printed."""
        mapped = self.buffers.get("CPU_Mapped")
        return None if mapped is None else mapped.get("model")

    @property
    def overridden_tensor_count(self) -> int:
        """How many distinct tensors had their buffer type overridden."""
        return len(self.overridden_tensors)

    @property
    def overridden_layers(self) -> tuple[int, ...]:
        """Sorted block indices of the overridden tensors."""
        blocks = {b for b in map(block_of, self.overridden_tensors) if b is not None}
        return tuple(sorted(blocks))

    def to_json(self) -> dict[str, Any]:
        """The summary as a JSON-ready dict (sizes in MiB, as the log prints them):
        every field, and the totals derived from them."""
        return {
            **json_fields(self),
            "gpu_total_mib": self.gpu_total_mib,
            "gpu_model_mib": self.gpu_mib("model"),
            "gpu_kv_mib": self.gpu_mib("kv"),
            "gpu_compute_mib": self.gpu_mib("compute"),
            "kv_mib": self.all_mib("kv"),
            "compute_mib": self.all_mib("compute"),
            "cpu_mapped_mib": self.cpu_mapped_mib,
            "overridden_tensor_count": self.overridden_tensor_count,
            "overridden_layers": list(self.overridden_layers),
        }


class _Scan:
    """Mutable state while reading the log line by line."""

    def __init__(self) -> None:
        self.recognised = False
        self.load_starts = 0
        self.buffers: dict[str, dict[str, Decimal]] = {}
        self.overrides: dict[str, Decimal | None] = {}
        self.targets: set[str] = set()
        self.counts: dict[str, int] = {}
        self.params: tuple[str, float] | None = None
        self.file_size: tuple[str, float] | None = None
        self.offloaded: tuple[int, int] | None = None
        self.settings: dict[str, str] = {}
        self.fit: list[str] = []
        self.alloc_failure: dict[str, Any] | None = None

    def line(self, line: str) -> None:
        if self._alloc_failed(line):
            self.recognised = True
            return
        if _LOAD_START.search(line):
            # A new load (the real one after a sizing pass): its buffers replace the last.
            self.recognised = True
            self.load_starts += 1
            self.buffers = {}
            return
        if self._buffer(line) or self._override(line):
            self.recognised = True
            return
        offloaded = _OFFLOADED.search(line)
        if offloaded:
            self.recognised = True
            self.offloaded = (int(offloaded.group("done")), int(offloaded.group("total")))
            return
        kv = _KV_EXPERT.search(line)
        if kv:
            self.recognised = True
            self.counts.setdefault(kv.group("key"), int(kv.group("value")))
            return
        info = _PRINT_INFO.search(line)
        if info:
            self._print_info(info.group("key").strip(), info.group("value"))
            return
        self._setting(line)

    def _setting(self, line: str) -> None:
        # The last value wins: a sizing pass (b11434) prints them before the real load.
        if context := _CONTEXT.search(line):
            self.settings[context.group("key")] = context.group("value")
        elif threads := _THREADS.search(line):
            self.settings["threads"] = threads.group("threads")
            self.settings["threads_batch"] = threads.group("batch")
        elif kv := _KV_TYPES.search(line):
            self.settings["kv_type_k"] = kv.group("k")
            self.settings["kv_type_v"] = kv.group("v")
        elif (fit := _FIT.search(line)) and len(self.fit) < _FIT_LINES_KEPT:
            self.fit.append(fit.group("text"))

    def _alloc_failed(self, line: str) -> bool:
        """Note the first failed device allocation, and which allocation it was."""
        failure = self.alloc_failure
        if failure is not None and failure["kind"] is None:
            for pattern, kind in _ALLOC_WHAT:
                if pattern.search(line):
                    failure["kind"] = kind
                    break
        match = _ALLOC_FAILED.search(line)
        if not match:
            return False
        if match["cuda"] is not None:
            buffer = f"CUDA{match['cuda']}"
            size: int | None = int(Decimal(match["mib"]) * (1 << 20))
        else:
            buffer = match["buft"] or match["named"]
            size = int(match["bytes"]) if match["bytes"] else None
        device = buffer.split("[", 1)[0]
        if failure is None and not is_host_device(device):
            self.alloc_failure = {"buffer": buffer, "device": device, "bytes": size, "kind": None}
        elif failure is not None and buffer == failure["buffer"] and match["bytes"]:
            failure["bytes"] = size  # the exact byte count beats CUDA's MiB
        return True

    def _buffer(self, line: str) -> bool:
        match = _BUFFER.search(line)
        kind = "model"
        if match:
            kind = match.group("kind").lower()
        else:
            match = _OLD_MODEL_BUFFER.search(line)
            if not match:
                return False
        by_kind = self.buffers.setdefault(match.group("dev"), {})
        # Summed: a large model can be mapped as several CPU_Mapped buffers.
        by_kind[kind] = by_kind.get(kind, Decimal(0)) + Decimal(match.group("mib"))
        return True

    def _override(self, line: str) -> bool:
        match = _OVERRIDE.search(line)
        if not match:
            return False
        mib = match.group("mib")
        self.overrides[match.group("name")] = None if mib is None else Decimal(mib)
        self.targets.add(match.group("target"))
        return True

    def _print_info(self, key: str, value: str) -> None:
        if key in _INFO_KEYS and re.fullmatch(_INT, value, _FLAGS):
            # print_info is authoritative over the raw metadata dump.
            self.counts[_INFO_KEYS[key]] = int(value)
            self.recognised = True
        elif key == "model params" and (params := _PARAMS.match(value)):
            num, unit = params.group("num"), params.group("unit")
            self.params = (f"{num} {unit}", float(Decimal(num) * _PARAM_SCALE[unit]))
            self.recognised = True
        elif key == "file size" and (size := _FILE_SIZE.match(value)):
            num, unit = size.group("num"), size.group("unit")
            self.file_size = (f"{num} {unit}", float(Decimal(num) * _MIB_SCALE[unit]))
            self.recognised = True

    def summary(self) -> LoaderLogSummary:
        sizes = [mib for mib in self.overrides.values() if mib is not None]
        return LoaderLogSummary(
            expert_count=self.counts.get("expert_count"),
            expert_used_count=self.counts.get("expert_used_count"),
            expert_shared_count=self.counts.get("expert_shared_count"),
            model_params_text=None if self.params is None else self.params[0],
            model_params=None if self.params is None else self.params[1],
            file_size_text=None if self.file_size is None else self.file_size[0],
            file_size_mib=None if self.file_size is None else self.file_size[1],
            buffers={
                dev: {kind: float(mib) for kind, mib in kinds.items()}
                for dev, kinds in self.buffers.items()
            },
            overridden_tensors=tuple(sorted(self.overrides)),
            overridden_mib=float(sum(sizes, Decimal(0))),
            override_targets=tuple(sorted(self.targets)),
            layers_offloaded=None if self.offloaded is None else self.offloaded[0],
            layers_total=None if self.offloaded is None else self.offloaded[1],
            # A log cut before its first "loaded meta data" line still shows one load.
            load_passes=max(self.load_starts, 1),
            settings=dict(self.settings),
            fit_lines=tuple(self.fit),
            device_alloc_failure=None if self.alloc_failure is None else dict(self.alloc_failure),
        )


def loader_line(raw: str) -> str:
    """One log line as the parser reads it: colour codes and the `-lv 5` timestamp and
    level prefix removed, NUL bytes and the line end dropped."""
    line = _ANSI.sub("", raw.replace("\x00", "").rstrip("\r\n"))
    prefix = _LV5_PREFIX.match(line)
    return line[prefix.end() :] if prefix else line


class LoadSplitter:
    """Where each model load of a log begins and ends, fed one line at a time
    (`loader_line` applied): `feed` answers "start" on a load's first line, "end" on
    its last, else None.

    A load begins at the first loader line seen outside a load (the device line, the
    metadata line, or `--fit`'s announcement) and ends at the context's graph line.
    `--fit`'s sizing pass is part of the load it sizes: its graph line does not end
    the load. A metadata line inside a load that already had all its passes begins a
    new load: the one before never finished (a crash or an abort mid-load)."""

    def __init__(self) -> None:
        self.open = False
        self._sizing = False
        self._passes = 0  # metadata lines seen in the open load
        self._allowed = 1  # passes the open load may have (2 with a sizing pass)

    def _begin(self) -> str:
        self.open, self._sizing, self._passes, self._allowed = True, False, 0, 1
        return "start"

    def feed(self, line: str) -> str | None:
        event = None
        if _FIT_BEGIN.search(line):
            event = None if self.open else self._begin()
            self._sizing, self._allowed = True, 2
        elif _LOAD_START.search(line):
            if not self.open or self._passes >= self._allowed:
                event = self._begin()
            self._passes += 1
        elif _LOAD_OPENER.search(line):
            event = None if self.open else self._begin()
        elif _FIT_DONE.search(line):
            self._sizing = False
        elif self.open and _LOAD_END.search(line):
            if self._sizing:
                self._sizing = False  # the sizing pass ended; the real load follows
            else:
                self.open = False
                event = "end"
        return event


def split_loads(text: str) -> tuple[str, list[str]]:
    """The log cut into what precedes the first load (the server's start-up: thread
    counts, devices) and one text per model load, each from its first line to the
    line before the next load's first."""
    splitter = LoadSplitter()
    prefix: list[str] = []
    parts: list[list[str]] = []
    for raw in text.splitlines():
        if splitter.feed(loader_line(raw)) == "start":
            parts.append([])
        (parts[-1] if parts else prefix).append(raw)
    return "\n".join(prefix), ["\n".join(lines) for lines in parts]


def _scan(text: str) -> _Scan:
    scan = _Scan()
    for raw in text.splitlines():
        scan.line(loader_line(raw))
    return scan


# The facts every load must agree on for the last load to stand for the whole log.
_AGREEING = (
    ("buffers", "buffer sizes"),
    ("overridden_tensors", "overridden tensors"),
    ("override_targets", "override targets"),
    ("layers_offloaded", "layers offloaded"),
    ("settings", "settings"),
)


def _differences(loads: list[LoaderLogSummary]) -> tuple[str, ...]:
    """Which facts differ between the loads, naming the first load that differs from
    the first (loads numbered from 1, as a reader counts them)."""
    out = []
    first = loads[0]
    for attr, label in _AGREEING:
        for number, load in enumerate(loads[1:], start=2):
            if getattr(load, attr) != getattr(first, attr):
                out.append(
                    f"{label} differ between load 1 and load {number} of {len(loads)}: "
                    f"{_shown(getattr(first, attr))} vs {_shown(getattr(load, attr))}"
                )
                break
    return tuple(out)


def _shown(value: object) -> str:
    text = json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= 160 else text[:157] + "..."


def parse_loader_log(text: str, *, source: str = "the log") -> LoaderLogSummary:
    """Summarise a llama.cpp loader log (either format), with one load or many.

    Each load is parsed on its own; the summary is the last load's, with the number
    of loads and what differs between them. Unknown lines are ignored; CRLF line
    ends, NUL bytes and a log cut off mid-line are tolerated. Raises LogParseError
    when the text has none of the lines read here (`source` names the text).
    """
    prefix, parts = split_loads(text.replace("\x00", ""))
    # The start-up lines (b11434 prints its thread counts there) hold for every load.
    scans = [_scan(f"{prefix}\n{part}") for part in parts] or [_scan(prefix)]
    loads = [scan.summary() for scan in scans if scan.recognised]
    if not loads:
        raise LogParseError(
            f"{source} has none of the llama.cpp loader lines (buffer sizes, print_info, "
            "tensor overrides); pass the full stdout/stderr of llama-server or shimmy"
        )
    last = loads[-1]
    return dataclasses.replace(last, loads=len(loads), load_differences=_differences(loads))


def _cell(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def format_summary(summary: LoaderLogSummary) -> str:
    """The human-readable table `inspect-log` prints."""
    experts = (
        f"{_cell_int(summary.expert_count)} (used {_cell_int(summary.expert_used_count)}, "
        f"shared {_cell_int(summary.expert_shared_count)})"
    )
    offloaded = (
        "-"
        if summary.layers_offloaded is None
        else f"{summary.layers_offloaded}/{summary.layers_total}"
    )
    targets = ", ".join(summary.override_targets) or "-"
    rows = [
        ("load passes", str(summary.load_passes)),
        ("experts", experts),
        ("model params", summary.model_params_text or "-"),
        ("file size", summary.file_size_text or "-"),
        ("layers offloaded", offloaded),
        ("GPU total (MiB)", _cell(summary.gpu_total_mib)),
        ("CPU_Mapped (MiB)", _cell(summary.cpu_mapped_mib)),
        (
            "overridden tensors",
            f"{summary.overridden_tensor_count} in {len(summary.overridden_layers)} layers "
            f"-> {targets} ({_cell(summary.overridden_mib)} MiB)",
        ),
    ]
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    if summary.buffers:
        dev_width = max(len("device"), *(len(dev) for dev in summary.buffers))
        lines += ["", "buffers of the last load (MiB)"]
        lines.append(f"{'device':<{dev_width}}" + "".join(f"{k:>12}" for k in BUFFER_KINDS))
        for dev, kinds in summary.buffers.items():
            cells = "".join(f"{_cell(kinds.get(k)):>12}" for k in BUFFER_KINDS)
            lines.append(f"{dev:<{dev_width}}{cells}")
    return "\n".join(lines)


def _cell_int(value: int | None) -> str:
    return "-" if value is None else str(value)


def print_log_summary(path: Path, *, as_json: bool = False) -> None:
    """`inspect-log PATH [--json]`: summarise a saved loader log as a table or JSON."""
    if not path.is_file():
        raise LogParseError(f"log file {path} not found; pass the path of a saved server log")
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise LogParseError(
            f"cannot read log file {path} ({exc.strerror}); check its permissions"
        ) from exc
    summary = parse_loader_log(text, source=str(path))
    print(json.dumps(summary.to_json(), indent=2) if as_json else format_summary(summary))
