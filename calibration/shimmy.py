"""Shimmy 1.7.0 as it really behaves, for the calibration server's Shimmy mode.

Read from Shimmy's source at tag v1.7.0 (src/server.rs, src/api.rs,
src/openai_compat.rs, src/engine/adapter.rs, src/engine/llama.rs) and axum
0.7.9's SSE writer:

* Start-up loads nothing: `serve` discovers models and starts serving; /health
  answers at once.
* Every generation request loads the model again before its first token
  (adapter.rs: "no caching for now"): llama.cpp b6686 prints its whole loader
  log per request, ending with `llama_context: graph splits = N`. The response
  (status line and headers included) only starts after the load.
* Only one load can exist at a time (llama-cpp-2's backend is a process-wide
  flag, set by each load and cleared when the request's model is dropped), so a
  generation request that arrives while another is loading or generating gets
  502 with an empty body.
* Streams are axum SSE events: `data:` then the value, with one extra space only
  when the value starts with a space; a value holding newlines becomes several
  `data:` lines of one event; the stream ends `data:[DONE]`. `"stream"` absent
  means streamed (GenOptions' default).
* /api/generate streams each token's bare text; non-streamed it answers
  `{"response": "..."}`.
* /v1/chat/completions streams a role chunk, one chunk per token, then a final
  chunk whose finish_reason is always "stop" (even when max_tokens ended it),
  with no `usage` and no `timings`; non-streamed, finish_reason "stop" and
  usage 0/0.
* No /v1/completions and no /tokenize: 404 with an empty body (axum's fallback).
* A body without `model` is refused by axum's Json extractor: 422, plain text.
"""

from __future__ import annotations

import contextlib
import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from common.errors import ConfigError

VERSION = "1.7.0"

# The model the loader log describes: a small invented MoE (4 blocks, 8 experts,
# top 2), with per-tensor sizes chosen so the buffer totals add up.
_BLOCKS = 4
_EXPERT_TENSORS = (("ffn_gate_exps", 27.00, "q4_K"), ("ffn_down_exps", 39.38, "q6_K"),
                   ("ffn_up_exps", 27.00, "q4_K"))  # fmt: skip
_DENSE_PER_BLOCK_MIB = 6.25
_EMBD_MIB = 41.02  # token_embd stays in host memory, as llama.cpp keeps it


@dataclass(frozen=True)
class ShimmyMode:
    """How the calibration server plays Shimmy 1.7.0.

    `load_s`: the per-request model load, before the response starts. `log`:
    where the loader log goes (a path, appended to; a text stream; None: this
    process's stderr, so a collector that launched it captures it). `cpu_moe`:
    the log shows every expert tensor overridden to host memory, as Shimmy's
    `--cpu-moe` does.
    """

    load_s: float = 0.3
    log: Path | TextIO | None = None
    cpu_moe: bool = False
    n_ctx: int = 4096
    model_path: str = "/models/calibration-moe-8x-Q4_K_M.gguf"

    def __post_init__(self) -> None:
        if not self.load_s >= 0:
            raise ConfigError(f"shimmy mode: load_s must be >= 0, got {self.load_s}")
        if self.n_ctx < 1:
            raise ConfigError(f"shimmy mode: n_ctx must be >= 1, got {self.n_ctx}")


class LoaderLog:
    """The loader log's sink: each line written and flushed on its own."""

    def __init__(self, target: Path | TextIO | None) -> None:
        self._lock = threading.Lock()
        self._owned: TextIO | None = None
        if isinstance(target, Path):
            try:
                self._owned = target.open("a", encoding="utf-8")
            except OSError as exc:
                raise ConfigError(f"shimmy mode: cannot open the log file {target}: {exc}") from exc
            self._stream: TextIO = self._owned
        else:
            self._stream = target if target is not None else sys.stderr

    def write(self, line: str) -> None:
        with self._lock:
            self._stream.write(line + "\n")
            self._stream.flush()

    def close(self) -> None:
        if self._owned is not None:
            with contextlib.suppress(OSError):
                self._owned.close()


def loader_log_lines(mode: ShimmyMode) -> list[str]:
    """One model load as llama.cpp b6686 prints it inside Shimmy (no timestamps)."""
    names = ["token_embd", "output_norm", "output"]
    tensors = len(names) + _BLOCKS * 10
    lines = [
        "llama_model_load_from_file_impl: using device CUDA0 (Calibration GPU) "
        "(0000:01:00.0) - 24000 MiB free",
        f"llama_model_loader: loaded meta data with 12 key-value pairs and {tensors} tensors "
        f"from {mode.model_path} (version GGUF V3 (latest))",
        "llama_model_loader: Dumping metadata keys/values. Note: KV overrides do not apply "
        "in this output.",
    ]
    kvs = [
        ("general.architecture", "str", "qwen3moe"),
        ("general.name", "str", "Calibration Moe 8x"),
        ("qwen3moe.block_count", "u32", str(_BLOCKS)),
        ("qwen3moe.context_length", "u32", "32768"),
        ("qwen3moe.expert_count", "u32", "8"),
        ("qwen3moe.expert_used_count", "u32", "2"),
    ]
    for i, (key, kind, value) in enumerate(kvs):
        lines.append(f"llama_model_loader: - kv {i:3d}: {key:>40} {kind:<12} = {value}")
    lines += [
        "llama_model_loader: - type  f32:   13 tensors",
        "llama_model_loader: - type q4_K:   22 tensors",
        "llama_model_loader: - type q6_K:    8 tensors",
        "print_info: file format = GGUF V3 (latest)",
        "print_info: file type   = Q4_K - Medium",
        "print_info: file size   = 480.56 MiB (4.87 BPW) ",
        "print_info: arch             = qwen3moe",
        f"print_info: n_layer          = {_BLOCKS}",
        "print_info: n_expert         = 8",
        "print_info: n_expert_used    = 2",
        "print_info: model params     = 0.83 B",
        "print_info: general.name     = Calibration Moe 8x",
        "load_tensors: loading model tensors, this can take a while... (mmap = true)",
    ]
    lines += [
        f"load_tensors: layer {b:3d} assigned to device CUDA0, is_swa = 0" for b in range(_BLOCKS)
    ]
    experts_mib = 0.0
    for b in range(_BLOCKS):
        for name, mib, qtype in _EXPERT_TENSORS:
            experts_mib += mib
            if mode.cpu_moe:
                lines.append(
                    f"tensor blk.{b}.{name}.weight ({mib:g} MiB {qtype}) "
                    "buffer type overridden to CUDA_Host"
                )
    dense_mib = _BLOCKS * _DENSE_PER_BLOCK_MIB + _EMBD_MIB  # blocks + output head
    host_mib = _EMBD_MIB + (experts_mib if mode.cpu_moe else 0.0)
    gpu_mib = dense_mib + (0.0 if mode.cpu_moe else experts_mib)
    kv_mib = mode.n_ctx * _BLOCKS * 4 / 1024  # f16 K and V, 1024 wide: 4 KiB per cell per layer
    lines += [
        f"load_tensors: offloading {_BLOCKS} repeating layers to GPU",
        "load_tensors: offloading output layer to GPU",
        f"load_tensors: offloaded {_BLOCKS + 1}/{_BLOCKS + 1} layers to GPU",
        f"load_tensors:   CPU_Mapped model buffer size = {host_mib:8.2f} MiB",
        f"load_tensors:        CUDA0 model buffer size = {gpu_mib:8.2f} MiB",
        "...........................................",
        "llama_context: constructing llama_context",
        "llama_context: n_seq_max     = 1",
        f"llama_context: n_ctx         = {mode.n_ctx}",
        "llama_context: n_batch       = 2048",
        "llama_context: n_ubatch      = 512",
        "llama_context: flash_attn    = auto",
        "llama_context: kv_unified    = false",
        "llama_context:  CUDA_Host  output buffer size =     0.58 MiB",
        f"llama_kv_cache:      CUDA0 KV buffer size = {kv_mib:8.2f} MiB",
        f"llama_kv_cache: size = {kv_mib:7.2f} MiB ({mode.n_ctx:6d} cells, {_BLOCKS:3d} layers, "
        f" 1/1 seqs), K (f16): {kv_mib / 2:7.2f} MiB, V (f16): {kv_mib / 2:7.2f} MiB",
        "llama_context:      CUDA0 compute buffer size =   104.50 MiB",
        "llama_context:  CUDA_Host compute buffer size =    12.01 MiB",
        "llama_context: graph nodes  = 247",
        f"llama_context: graph splits = {14 if mode.cpu_moe else 2} (with bs=512), "
        f"{10 if mode.cpu_moe else 2} (with bs=1)",
    ]
    return lines


def play_load(
    mode: ShimmyMode, log: LoaderLog, wait_until: Callable[[int], None]
) -> tuple[int, int]:
    """Write one load's log over `load_s`: first line now, `graph splits` at the end.

    Returns (start, end) in perf_counter_ns.
    """
    lines = loader_log_lines(mode)
    start = time.perf_counter_ns()
    span = round(mode.load_s * 1e9)
    for i, line in enumerate(lines):
        wait_until(start + span * i // (len(lines) - 1))
        log.write(line)
    return start, time.perf_counter_ns()


def axum_event(data: str) -> bytes:
    """One SSE event as axum's `Event::data` writes it (a CR would make axum panic)."""
    out = bytearray()
    for line in data.split("\n"):
        out += b"data:" + (b" " if line.startswith(" ") else b"") + line.encode() + b"\n"
    return bytes(out + b"\n")


def _compact(obj: dict[str, Any]) -> str:
    # serde_json: no spaces, non-ASCII written as UTF-8.
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class ChatChunks:
    """Shimmy 1.7.0's /v1/chat/completions chunks and body (openai_compat.rs)."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())

    def _chunk(self, content: str | None, role: str | None, finish: str | None) -> bytes:
        return axum_event(
            _compact(
                {
                    "id": self.id,
                    "object": "chat.completion.chunk",
                    "created": self.created,
                    "model": self.model,
                    "choices": [
                        {
                            "index": 0,
                            "delta": {"content": content, "role": role},
                            "finish_reason": finish,
                        }
                    ],
                }
            )
        )

    def role(self) -> bytes:
        return self._chunk(None, "assistant", None)

    def content(self, text: str) -> bytes:
        return self._chunk(text, None, None)

    def final(self) -> bytes:
        return self._chunk(None, None, "stop")

    def body(self, text: str) -> bytes:
        return _compact(
            {
                "id": self.id,
                "object": "chat.completion",
                "created": self.created,
                "model": self.model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
            }
        ).encode()


def health_body() -> dict[str, Any]:
    """GET /health as Shimmy 1.7.0 answers it (server.rs), with one model available."""
    return {
        "status": "ok",
        "service": "shimmy",
        "version": VERSION,
        "models": {"total": 1, "discovered": 1, "manual": 0},
        "endpoints": {
            "health": "/health",
            "models": "/v1/models",
            "chat": "/v1/chat/completions",
            "generate": "/api/generate",
        },
        "compatibility": {"openai": True, "cors": True},
    }


CORS_HEADERS = (
    b"Access-Control-Allow-Origin: *\r\n"
    b"Access-Control-Allow-Methods: GET, POST, OPTIONS\r\n"
    b"Access-Control-Allow-Headers: Content-Type, Authorization\r\n"
    b"Access-Control-Max-Age: 86400\r\n"
)


class BackendSlot:
    """llama-cpp-2's one backend, as one request holds it (`held` False: it was taken)."""

    def __init__(self, lock: threading.Lock) -> None:
        self._lock = lock
        self.held = lock.acquire(blocking=False)

    def release(self) -> None:
        """Free it (once): when generation returns, or when the request ends."""
        if self.held:
            self.held = False
            self._lock.release()


@contextlib.contextmanager
def backend_slot(lock: threading.Lock) -> Iterator[BackendSlot]:
    """Hold llama-cpp-2's one backend for a request, released at the latest on exit."""
    slot = BackendSlot(lock)
    try:
        yield slot
    finally:
        slot.release()
