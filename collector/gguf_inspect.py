"""Model specs read from a GGUF file: what the plan asks per model, and the
expert tensors (names, bytes per block) that `--cpu-moe` / `--n-cpu-moe K` move.

Only the GGUF header is parsed (through `gguf.GGUFReader`, which memory-maps the
file); tensor data is never copied into memory. The file's SHA-256 is streamed, and
a spec once read is remembered under it (collector.spec_cache).
The spec holds facts of the file only; what a configuration leaves on the
device is the SQL macro `device_weight_bytes` (evidence.metrics), which the
`inspect-model` table evaluates too.
"""

from __future__ import annotations

import json
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType

from collector import spec_cache
from common.errors import GGUFError, ModelError
from common.files import file_sha256
from common.json_fields import json_fields
from evidence.llama_names import block_of, is_expert_tensor
from evidence.metrics import weights_on_device

__all__ = [
    "ModelSpec",
    "format_spec",
    "inspect_model",
    "print_spec",
]

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
    # The shapes the device memory of a load follows (collector.fit, the SQL macro
    # `predicted_device_bytes`); None where the file does not say.
    embedding_length: int | None = None
    feed_forward_length: int | None = None  # the dense FFN's width (the largest layer's)
    expert_feed_forward_length: int | None = None  # one expert's FFN width
    expert_shared_feed_forward_length: int | None = None
    # K and V elements one context cell holds, summed over every layer (heads x length).
    kv_elements_per_token: int | None = None
    # Bytes of the input layer (token embeddings), which llama.cpp keeps in host memory
    # whatever -ngl says, and of the output matrix when it is the embeddings reused.
    input_tensor_bytes: int = 0
    tied_output_bytes: int = 0

    @property
    def moe_layer_count(self) -> int:
        """How many blocks hold expert tensors."""
        return len(self.moe_layers)

    def to_json(self) -> dict[str, Any]:
        """The spec as a JSON-ready dict (snake_case keys, sizes in bytes); its
        `expert_bytes_by_layer` as [block, expert bytes] pairs."""
        return {**json_fields(self), "moe_layer_count": self.moe_layer_count}


def inspect_model(path: Path) -> ModelSpec:
    """Read a GGUF file's header and return its `ModelSpec`.

    Raises ModelError when the file is missing or cannot be read, GGUFError when
    its content is not a usable GGUF model.
    """
    if not path.is_file():
        raise ModelError(f"model file {path} not found; check the path or download the model")
    try:
        sha256 = file_sha256(path)
        file_bytes = path.stat().st_size
    except OSError as exc:
        raise ModelError(
            f"cannot read model file {path} ({exc.strerror}); check its permissions"
        ) from exc
    known = spec_cache.remembered(sha256, file_bytes, path)
    if known is not None:
        return known
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
    spec = _spec_from_reader(reader, path, file_bytes, sha256)
    spec_cache.remember(spec)
    return spec


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
    input_bytes = 0
    names = set()
    for tensor in reader.tensors:
        quant_mix[tensor.tensor_type.name] += 1
        parameter_count += int(tensor.n_elements)
        tensor_bytes += int(tensor.n_bytes)
        names.add(tensor.name)
        if tensor.name.split(".", 1)[0] in _INPUT_LAYER:
            input_bytes += int(tensor.n_bytes)
        # The same pattern llama.cpp uses for --cpu-moe / --n-cpu-moe, so the spec
        # lists exactly the tensors the server moves, biases and scales included.
        if is_expert_tensor(tensor.name):
            expert_names.append(tensor.name)
            expert_bytes += int(tensor.n_bytes)
            block = block_of(tensor.name)
            if block is not None:
                by_layer[block] = by_layer.get(block, 0) + int(tensor.n_bytes)

    def arch_int(key: str) -> int | None:
        return _int_field(reader, path, f"{architecture}.{key}")

    def arch_ints(key: str) -> list[int] | None:
        return _ints_field(reader, path, f"{architecture}.{key}")

    blocks = arch_int("block_count")
    embd = arch_int("embedding_length")
    ff = arch_ints("feed_forward_length")
    embedding = next((t for t in reader.tensors if t.name == "token_embd.weight"), None)
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
        embedding_length=embd,
        feed_forward_length=max(ff) if ff else None,
        expert_feed_forward_length=arch_int("expert_feed_forward_length"),
        expert_shared_feed_forward_length=arch_int("expert_shared_feed_forward_length"),
        kv_elements_per_token=_kv_elements(
            blocks,
            embd,
            arch_ints("attention.head_count"),
            arch_ints("attention.head_count_kv"),
            arch_int("attention.key_length"),
            arch_int("attention.value_length"),
        ),
        input_tensor_bytes=input_bytes,
        # No output matrix in the file: llama.cpp reuses the embeddings for it and puts
        # that copy with the output layer, on the device.
        tied_output_bytes=int(embedding.n_bytes)
        if embedding is not None and "output.weight" not in names
        else 0,
    )


# The tensors of llama.cpp's input layer (LLM_TENSOR_LAYER_INPUT), by name prefix.
_INPUT_LAYER = frozenset({"token_embd", "position_embd", "token_types", "per_layer_token_embd"})


def _kv_elements(
    blocks: int | None,
    embd: int | None,
    heads: list[int] | None,
    kv_heads: list[int] | None,
    key_length: int | None,
    value_length: int | None,
) -> int | None:
    """K and V elements per context cell over all layers: for each layer its KV heads x
    (key length + value length), the lengths defaulting to n_embd / n_head as in
    llama.cpp; a per-layer head count (an array) is taken layer by layer."""
    if not blocks or not embd or not heads:
        return None
    per_layer_heads = heads if len(heads) == blocks else [heads[0]] * blocks
    per_layer_kv = kv_heads or per_layer_heads
    per_layer_kv = per_layer_kv if len(per_layer_kv) == blocks else [per_layer_kv[0]] * blocks
    total = 0
    for n_head, n_kv in zip(per_layer_heads, per_layer_kv, strict=True):
        if not n_head:
            continue
        k = key_length or embd // n_head
        v = value_length or embd // n_head
        total += n_kv * (k + v)
    return total


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


def _ints_field(reader: GGUFReader, path: Path, key: str) -> list[int] | None:
    """An integer key that some models write per layer (an array): its values."""
    field = reader.get_field(key)
    if field is None:
        return None
    if field.types and field.types[0] == GGUFValueType.ARRAY:
        if len(field.types) != 2 or field.types[1] not in _INT_TYPES:
            raise GGUFError(
                f"{path}: key {key} is not a list of integers; the file is damaged, re-download it"
            )
        return [int(v) for v in field.contents()]
    value = _int_field(reader, path, key)
    return None if value is None else [value]


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


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _mib(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):,.2f} MiB"


def _optional(value: object) -> str:
    return "-" if value is None else str(value)


def _device_weights(spec: ModelSpec) -> list[tuple[str, str]]:
    """The weight bytes left on the device per configuration (weights only: the KV
    cache and compute buffers, which the loader log gives, stay there too)."""
    baseline = weights_on_device(spec.to_json(), None)
    offload = weights_on_device(spec.to_json(), -1)
    if baseline is None or offload is None:
        return []
    saved = 100.0 * (1 - offload / baseline) if baseline else 0.0
    return [
        ("device weights, baseline", _mib(baseline)),
        ("device weights, --cpu-moe", _mib(offload)),
        ("weights kept off the device", f"{saved:.1f} % (weights only; no KV or compute)"),
    ]


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
        *_device_weights(spec),
    ]
    width = max(len(label) for label, _ in rows)
    return "\n".join(f"{label:<{width}}  {value}" for label, value in rows)


def print_spec(path: Path, *, as_json: bool = False) -> None:
    """`inspect-model PATH [--json]`: print a model's spec as a table or JSON."""
    spec = inspect_model(path)
    print(json.dumps(spec.to_json(), indent=2) if as_json else format_spec(spec))
