"""A random-weight MoE GGUF of a realistic shape, for measuring memory and speed.

Memory and decode speed depend on tensor shapes, types and placement, not on
what the weights mean, so a model whose Q8_0 weights are random but valid
(a finite f16 scale and int8 values per 32-weight block) loads and decodes
exactly like a trained one of the same shape. It needs no model hub and no
download: the GPU check writes one where it runs.

The architecture is llama with Mixtral-style experts (`ffn_{gate,up,down}_exps`
behind `ffn_gate_inp`), the one llama.cpp's `--cpu-moe` was written for; the
vocabulary is a synthetic SentencePiece one (byte fallback plus filler pieces)
of a realistic size, so the embedding and output tensors weigh what they would.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFWriter

from collector.upcycle import write_gguf

Q8_0_BLOCK = 32
Q8_0_BYTES = 34  # one f16 scale + 32 int8 values


@dataclass(frozen=True)
class MoeShape:
    """The dimensions of the model to write."""

    layers: int
    embd: int
    heads: int
    kv_heads: int
    ff: int  # per expert
    experts: int
    experts_used: int
    vocab: int
    context: int = 4096

    def __post_init__(self) -> None:
        for name in ("embd", "ff"):
            if getattr(self, name) % Q8_0_BLOCK:
                raise ValueError(f"{name} must be a multiple of {Q8_0_BLOCK} (Q8_0 blocks)")
        if self.embd % self.heads or self.heads % self.kv_heads:
            raise ValueError("embd must divide into heads, heads into kv_heads")
        if not 1 <= self.experts_used <= self.experts:
            raise ValueError("need 1 <= experts_used <= experts")


# DeepSeek-MoE-16B-like experts (64 of them, 6 used, narrow FFNs), fewer layers:
# about 4.7 GiB, so a check runs in minutes and leaves the GPU mostly free.
REALISTIC = MoeShape(
    layers=8, embd=2048, heads=16, kv_heads=16, ff=1408, experts=64, experts_used=6, vocab=32000
)
# The same structure at toy size: for testing the check on a CPU.
TINY = MoeShape(
    layers=4, embd=256, heads=4, kv_heads=4, ff=256, experts=8, experts_used=2, vocab=1024
)
SHAPES = {"realistic": REALISTIC, "tiny": TINY}


@dataclass(frozen=True)
class _Tensor:
    name: str
    shape: tuple[int, ...]  # numpy order: outermost first (GGUF ne reversed)
    ggml_type: GGMLQuantizationType
    produce: Callable[[], npt.NDArray[np.generic]]

    @property
    def byte_shape(self) -> tuple[int, ...]:
        if self.ggml_type == GGMLQuantizationType.Q8_0:
            return (*self.shape[:-1], self.shape[-1] // Q8_0_BLOCK * Q8_0_BYTES)
        return self.shape

    @property
    def dtype(self) -> np.dtype[np.generic]:
        if self.ggml_type == GGMLQuantizationType.Q8_0:
            return np.dtype(np.uint8)
        return np.dtype(np.float32)

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.byte_shape)) * self.dtype.itemsize


def _q8_0(shape: tuple[int, ...], seed: int) -> npt.NDArray[np.uint8]:
    """Random valid Q8_0 blocks: weights of about N(0, 0.02) in distribution."""
    rng = np.random.default_rng(seed)
    rows = int(np.prod(shape[:-1]))
    blocks = rows * (shape[-1] // Q8_0_BLOCK)
    out = np.empty((blocks, Q8_0_BYTES), dtype=np.uint8)
    # int8 uniform in [-127, 127] has sd 73.6; the scale brings it to ~0.02.
    out[:, :2] = np.frombuffer(np.float16(0.02 / 73.6).tobytes(), dtype=np.uint8)
    out[:, 2:] = rng.integers(-127, 128, size=(blocks, Q8_0_BLOCK), dtype=np.int8).view(np.uint8)
    return out.reshape(*shape[:-1], shape[-1] // Q8_0_BLOCK * Q8_0_BYTES)


def _f32(shape: tuple[int, ...], value: float | None, seed: int) -> npt.NDArray[np.float32]:
    if value is not None:
        return np.full(shape, value, dtype=np.float32)
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 0.02).astype(np.float32)


def _tensors(shape: MoeShape) -> Iterator[_Tensor]:
    head_dim = shape.embd // shape.heads
    kv = shape.kv_heads * head_dim
    seed = iter(range(1, 1 << 30))

    def q8(name: str, *dims: int) -> _Tensor:
        s = next(seed)
        return _Tensor(name, dims, GGMLQuantizationType.Q8_0, lambda: _q8_0(dims, s))

    def f32(name: str, *dims: int, value: float | None = None) -> _Tensor:
        s = next(seed)
        return _Tensor(name, dims, GGMLQuantizationType.F32, lambda: _f32(dims, value, s))

    yield q8("token_embd.weight", shape.vocab, shape.embd)
    for b in range(shape.layers):
        yield f32(f"blk.{b}.attn_norm.weight", shape.embd, value=1.0)
        yield q8(f"blk.{b}.attn_q.weight", shape.embd, shape.embd)
        yield q8(f"blk.{b}.attn_k.weight", kv, shape.embd)
        yield q8(f"blk.{b}.attn_v.weight", kv, shape.embd)
        yield q8(f"blk.{b}.attn_output.weight", shape.embd, shape.embd)
        yield f32(f"blk.{b}.ffn_norm.weight", shape.embd, value=1.0)
        yield f32(f"blk.{b}.ffn_gate_inp.weight", shape.experts, shape.embd)
        yield q8(f"blk.{b}.ffn_gate_exps.weight", shape.experts, shape.ff, shape.embd)
        yield q8(f"blk.{b}.ffn_up_exps.weight", shape.experts, shape.ff, shape.embd)
        yield q8(f"blk.{b}.ffn_down_exps.weight", shape.experts, shape.embd, shape.ff)
    yield f32("output_norm.weight", shape.embd, value=1.0)
    yield q8("output.weight", shape.vocab, shape.embd)


def _vocabulary(size: int) -> tuple[list[str], list[float], list[int]]:
    """A SentencePiece vocabulary: <unk> <s> </s>, the 256 byte pieces, filler."""
    tokens = ["<unk>", "<s>", "</s>", *(f"<0x{b:02X}>" for b in range(256))]
    types = [2, 3, 3, *([6] * 256)]  # unknown, control, control, byte
    filler = size - len(tokens)
    if filler < 0:
        raise ValueError(f"vocab must hold at least {len(tokens)} pieces")
    tokens += [f"\u2581w{i}" for i in range(filler)]
    types += [1] * filler  # normal
    scores = [0.0] * 3 + [-1000.0] * 256 + [-float(i) for i in range(filler)]
    return tokens, scores, types


def write_random_moe(path: Path, shape: MoeShape) -> Path:
    """Write the model atomically to `path` (one tensor in memory at a time)."""
    writer = GGUFWriter(path=None, arch="llama")
    writer.add_name(f"random MoE {shape.experts}x top-{shape.experts_used}, {shape.layers} layers")
    writer.add_string(
        "general.description",
        "Random Q8_0 weights of a realistic MoE shape, for memory and speed checks only.",
    )
    writer.add_context_length(shape.context)
    writer.add_embedding_length(shape.embd)
    writer.add_block_count(shape.layers)
    writer.add_feed_forward_length(shape.ff)
    writer.add_head_count(shape.heads)
    writer.add_head_count_kv(shape.kv_heads)
    writer.add_rope_dimension_count(shape.embd // shape.heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_expert_count(shape.experts)
    writer.add_expert_used_count(shape.experts_used)
    writer.add_file_type(7)  # mostly Q8_0
    tokens, scores, types = _vocabulary(shape.vocab)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    write_gguf(writer, list(_tensors(shape)), path)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.random_moe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("path", type=Path)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="realistic")
    args = parser.parse_args(argv)
    out = write_random_moe(args.path, SHAPES[args.shape])
    print(f"{out}: {out.stat().st_size / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
