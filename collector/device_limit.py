"""Holding llama.cpp's RPC device to a memory size, as a GPU of that size would be.

ggml-rpc-server has no memory option (b11434): it allocates what the client asks
for from host RAM and reports the host's free RAM as its memory. An address-space
limit on the process (RLIMIT_AS, set from outside with prlimit(2) once it listens)
makes an allocation beyond the size fail inside the device, where a CUDA
out-of-memory fails: llama-server then logs `failed to allocate RPC0[...] buffer of
size N` and exits, exactly as with a card that is too small.

The limit is the process's idle address space (binary, libraries, its first stack:
about 9 MB) plus the size, plus a stack for each compute thread it will start
(llama.cpp's CPU threads reserve their stacks as address space; a GPU's memory
holds none of them). What it admits was measured by bisection on the embedded
model (`python -m benchmarks.device_limit`): buffers up to the size less 1.2 to
2.2 MiB, the rpc-server's own working memory, as a GPU's driver keeps some of its
memory for itself.
"""

from __future__ import annotations

import sys
from typing import Any

import psutil

from common.errors import ConfigError

METHOD = "address-space limit (RLIMIT_AS) on the rpc-server"
# The environment a held device runs in: no gdb backtrace on an abort (see below).
HELD_ENV = {"GGML_NO_BACKTRACE": "1"}


def supported() -> str | None:
    """Why a memory size cannot be enforced on this system, or None when it can."""
    if not hasattr(psutil.Process, "rlimit") or not hasattr(psutil, "RLIMIT_AS"):
        return (
            f"holding the RPC device to a memory size needs an address-space limit "
            f"(RLIMIT_AS), which {sys.platform} does not offer; run on Linux, or leave "
            f"--device-memory out"
        )
    return None


def _thread_stack_bytes() -> int:
    """The address space each new thread reserves for its stack: glibc (and OpenMP's
    threads, which use its default) take the soft stack limit, 8 MiB by default."""
    import resource  # POSIX only; `supported()` has ruled the others out

    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return soft if 0 < soft < (1 << 30) else 8 << 20


def hold_to_size(pid: int, memory_bytes: int, threads: int) -> dict[str, Any]:
    """Limit the listening rpc-server `pid` (started with `threads` compute threads) so
    that it holds about `memory_bytes` of buffers; return how, for `server_runs.device`."""
    why = supported()
    if why:
        raise ConfigError(why)
    process = psutil.Process(pid)
    idle = int(process.memory_info().vms)
    stacks = max(0, threads - 1) * _thread_stack_bytes()
    limit = idle + memory_bytes + stacks
    process.rlimit(psutil.RLIMIT_AS, (limit, limit))
    # An allocation that fails mid-compute makes ggml abort and start gdb for a
    # backtrace; gdb inherits the limit, crashes, and would leave a core file in the
    # collector's folder. The launch turns the backtrace off (GGML_NO_BACKTRACE);
    # this keeps any crash of the device's tree from writing a core.
    process.rlimit(psutil.RLIMIT_CORE, (0, 0))
    return {
        "memory_bytes": memory_bytes,
        "method": METHOD,
        "address_space_bytes": limit,
        "idle_address_space_bytes": idle,
        "thread_stacks_bytes": stacks,
    }
