"""Model specs read from a GGUF file: what the plan asks per model, plus a
weights-only estimate of what `--cpu-moe` / `--n-cpu-moe K` keep off the GPU.

Only the GGUF header is parsed (through `gguf.GGUFReader`, which memory-maps the
file); tensor data is never copied into memory. The file's SHA-256 is streamed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType

from evidence.errors import GGUFError, ModelError

__all__ = [
    "EXPERT_TENSOR_PATTERN",
    "ModelSpec",
    "format_spec",
    "inspect_model",
    "main_inspect_model",
    "weights_gpu_bytes_n_cpu_moe",
]

# The same pattern llama.cpp b11434 uses for --cpu-moe / --n-cpu-moe
# (common/common.h, LLM_FFN_EXPS_REGEX), searched anywhere in the name, so the
# estimate moves exactly the tensors the server moves, biases and scales included.
EXPERT_TENSOR_PATTERN = re.compile(r"\.ffn_(?:up|down|gate|gate_up)_(?:ch|)exps")
_BLOCK_INDEX = re.compile(r"^blk\.(\d+)\.")
_HASH_BLOCK_BYTES = 1 << 20
# What a damaged or foreign file can make GGUFReader (numpy underneath) raise.
_READER_ERRORS = (ValueError, IndexError, KeyError, OverflowError, TypeError, struct.error)


@dataclass(frozen=True)
class ModelSpec:
    """Facts about one GGUF model file; sizes in bytes."""

    path: str
    architecture: str
    name: str | None
    parameter_count: int
    block_count: int | None
    context_length: int | None
    expert_count: int | None
    expert_used_count: int | None
    expert_shared_count: int | None
    file_bytes: int
    sha256: str
    quantization_mix: dict[str, int]
    tensor_count: int
    tensor_bytes_total: int
    expert_tensor_count: int
    expert_tensor_bytes: int
    moe_layers: tuple[int, ...]
    expert_tensor_names: tuple[str, ...]
    # (block index, expert tensor bytes in that block), for --n-cpu-moe estimates.
    expert_bytes_by_layer: tuple[tuple[int, int], ...]

    @property
    def moe_layer_count(self) -> int:
        """How many blocks hold expert tensors."""
        return len(self.moe_layers)

    @property
    def weights_gpu_bytes_baseline(self) -> int:
        """Weight bytes on the GPU with every layer offloaded and no expert override."""
        return self.tensor_bytes_total

    @property
    def weights_gpu_bytes_cpu_moe(self) -> int:
        """Weight bytes left on the GPU under `--cpu-moe` (all expert tensors on CPU)."""
        return self.tensor_bytes_total - self.expert_tensor_bytes

    @property
    def predicted_vram_saved_pct(self) -> float:
        """Weights-only estimate of the VRAM `--cpu-moe` saves, in percent.

        100 * expert tensor bytes / all tensor bytes. It ignores the KV cache and
        compute buffers, which stay on the GPU, so the measured saving of whole
        GPU memory is always lower than this figure.
        """
        if self.tensor_bytes_total == 0:
            return 0.0
        return 100.0 * self.expert_tensor_bytes / self.tensor_bytes_total

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (snake_case keys, sizes in bytes)."""
        return {
            "path": self.path,
            "architecture": self.architecture,
            "name": self.name,
            "parameter_count": self.parameter_count,
            "block_count": self.block_count,
            "context_length": self.context_length,
            "expert_count": self.expert_count,
            "expert_used_count": self.expert_used_count,
            "expert_shared_count": self.expert_shared_count,
            "file_bytes": self.file_bytes,
            "sha256": self.sha256,
            "quantization_mix": dict(self.quantization_mix),
            "tensor_count": self.tensor_count,
            "tensor_bytes_total": self.tensor_bytes_total,
            "expert_tensor_count": self.expert_tensor_count,
            "expert_tensor_bytes": self.expert_tensor_bytes,
            "moe_layer_count": self.moe_layer_count,
            "moe_layers": list(self.moe_layers),
            "expert_tensor_names": list(self.expert_tensor_names),
            "weights_gpu_bytes_baseline": self.weights_gpu_bytes_baseline,
            "weights_gpu_bytes_cpu_moe": self.weights_gpu_bytes_cpu_moe,
            "predicted_vram_saved_pct": self.predicted_vram_saved_pct,
            # [block, expert bytes] pairs: what --n-cpu-moe K estimates are made from.
            "expert_bytes_by_layer": [list(pair) for pair in self.expert_bytes_by_layer],
        }


def weights_gpu_bytes_n_cpu_moe(spec: ModelSpec, k: int) -> int:
    """Weight bytes left on the GPU under `--n-cpu-moe K` (weights only).

    llama.cpp keeps the expert tensors of blocks with index < K in CPU memory,
    so K = 0 is the baseline and K >= the block count equals `--cpu-moe`.
    """
    if k < 0:
        raise ValueError(f"--n-cpu-moe takes K >= 0, got {k}")
    on_cpu = sum(nbytes for block, nbytes in spec.expert_bytes_by_layer if block < k)
    return spec.tensor_bytes_total - on_cpu


def inspect_model(path: Path) -> ModelSpec:
    """Read a GGUF file's header and return its `ModelSpec`.

    Raises ModelError when the file is missing or cannot be read, GGUFError when
    its content is not a usable GGUF model.
    """
    if not path.is_file():
        raise ModelError(f"model file {path} not found; check the path or download the model")
    try:
        sha256 = _sha256(path)
        file_bytes = path.stat().st_size
    except OSError as exc:
        raise ModelError(
            f"cannot read model file {path} ({exc.strerror}); check its permissions"
        ) from exc
    try:
        reader = GGUFReader(path)
    except OSError as exc:
        raise ModelError(
            f"cannot map model file {path} ({exc}); check it is a regular file"
        ) from exc
    except _READER_ERRORS as exc:
        raise GGUFError(
            f"{path} is not a readable GGUF file ({_one_line(exc)}); "
            "re-download it or pass a .gguf model"
        ) from exc
    return _spec_from_reader(reader, path, file_bytes, sha256)


def _spec_from_reader(reader: GGUFReader, path: Path, file_bytes: int, sha256: str) -> ModelSpec:
    architecture = _str_field(reader, path, "general.architecture")
    if architecture is None:
        raise GGUFError(f"{path} has no general.architecture key; it is not a llama.cpp model file")

    quant_mix: Counter[str] = Counter()
    expert_names: list[str] = []
    expert_bytes = 0
    by_layer: dict[int, int] = {}
    parameter_count = 0
    tensor_bytes = 0
    for tensor in reader.tensors:
        quant_mix[tensor.tensor_type.name] += 1
        parameter_count += int(tensor.n_elements)
        tensor_bytes += int(tensor.n_bytes)
        if EXPERT_TENSOR_PATTERN.search(tensor.name):
            expert_names.append(tensor.name)
            expert_bytes += int(tensor.n_bytes)
            block = _BLOCK_INDEX.match(tensor.name)
            if block is not None:
                index = int(block.group(1))
                by_layer[index] = by_layer.get(index, 0) + int(tensor.n_bytes)

    def arch_int(key: str) -> int | None:
        return _int_field(reader, path, f"{architecture}.{key}")

    return ModelSpec(
        path=str(path.resolve()),
        architecture=architecture,
        name=_str_field(reader, path, "general.name"),
        parameter_count=parameter_count,
        block_count=arch_int("block_count"),
        context_length=arch_int("context_length"),
        expert_count=arch_int("expert_count"),
        expert_used_count=arch_int("expert_used_count"),
        expert_shared_count=arch_int("expert_shared_count"),
        file_bytes=file_bytes,
        sha256=sha256,
        quantization_mix=dict(sorted(quant_mix.items(), key=lambda item: (-item[1], item[0]))),
        tensor_count=len(reader.tensors),
        tensor_bytes_total=tensor_bytes,
        expert_tensor_count=len(expert_names),
        expert_tensor_bytes=expert_bytes,
        moe_layers=tuple(sorted(by_layer)),
        expert_tensor_names=tuple(sorted(expert_names)),
        expert_bytes_by_layer=tuple(sorted(by_layer.items())),
    )


_INT_TYPES = frozenset(
    {
        GGUFValueType.UINT8,
        GGUFValueType.INT8,
        GGUFValueType.UINT16,
        GGUFValueType.INT16,
        GGUFValueType.UINT32,
        GGUFValueType.INT32,
        GGUFValueType.UINT64,
        GGUFValueType.INT64,
    }
)


def _int_field(reader: GGUFReader, path: Path, key: str) -> int | None:
    field = reader.get_field(key)
    if field is None:
        return None
    if len(field.types) != 1 or field.types[0] not in _INT_TYPES:
        raise GGUFError(f"{path}: key {key} is not an integer; the file is damaged, re-download it")
    return int(field.contents())


def _str_field(reader: GGUFReader, path: Path, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None:
        return None
    if field.types != [GGUFValueType.STRING]:
        raise GGUFError(f"{path}: key {key} is not a string; the file is damaged, re-download it")
    try:
        return str(field.contents())
    except UnicodeDecodeError as exc:
        raise GGUFError(
            f"{path}: key {key} is not UTF-8; the file is damaged, re-download it"
        ) from exc


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(_HASH_BLOCK_BYTES):
            digest.update(block)
    return digest.hexdigest()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):,.2f} MiB"


def _optional(value: object) -> str:
    return "-" if value is None else str(value)


def format_spec(spec: ModelSpec) -> str:
    """The human-readable table `inspect-model` prints."""
    mix = ", ".join(f"{name} {count}" for name, count in spec.quantization_mix.items())
    rows = [
        ("path", spec.path),
        ("architecture", spec.architecture),
        ("name", _optional(spec.name)),
        ("parameters", f"{spec.parameter_count:,}"),
        ("blocks", _optional(spec.block_count)),
        ("context length", _optional(spec.context_length)),
        (
            "experts",
            f"{_optional(spec.expert_count)} (used {_optional(spec.expert_used_count)}, "
            f"shared {_optional(spec.expert_shared_count)})",
        ),
        ("file size", f"{spec.file_bytes:,} bytes ({_mib(spec.file_bytes)})"),
        ("sha256", spec.sha256),
        ("tensors", f"{spec.tensor_count} ({_mib(spec.tensor_bytes_total)})"),
        ("quantization mix", mix or "-"),
        (
            "expert tensors",
            f"{spec.expert_tensor_count} in {spec.moe_layer_count} layers "
            f"({_mib(spec.expert_tensor_bytes)})",
        ),
        ("GPU weights, baseline", _mib(spec.weights_gpu_bytes_baseline)),
        ("GPU weights, --cpu-moe", _mib(spec.weights_gpu_bytes_cpu_moe)),
        ("predicted VRAM saved", f"{spec.predicted_vram_saved_pct:.1f} % (weights only)"),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def main_inspect_model(argv: list[str]) -> int:
    """`inspect-model PATH.gguf [--json]`: print a model's spec; returns the exit code."""
    parser = argparse.ArgumentParser(
        prog="python -m collector inspect-model",
        description="Print a GGUF model's spec and the weights-only --cpu-moe estimate.",
    )
    parser.add_argument("path", type=Path, help="the .gguf model file")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)
    spec = inspect_model(args.path)
    if args.json:
        print(json.dumps(spec.to_json(), indent=2))
    else:
        print(format_spec(spec))
    return 0
