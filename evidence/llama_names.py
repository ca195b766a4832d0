"""What llama.cpp's names mean, read the one way everyone reads them.

llama.cpp names a transformer block's tensors `blk.N.<name>.weight`; the expert
tensors of a MoE block are `ffn_{gate,up,down,gate_up}_exps` (or `_chexps`);
a buffer lives in host memory when its device is `CPU*`, a pinned `*_Host`, or
a CPU-side extra (`AMX`). The GGUF inspection, the loader-log parser, the
placement check, the report and the SQL macro `block_of` (evidence.metrics)
all take these from here.
"""

from __future__ import annotations

import re

# The block index of a tensor name. Bounded digits: a garbled log line can never
# become a huge number.
BLOCK_PATTERN = r"^blk\.([0-9]{1,6})\."
# The same pattern as SQL's regexp_extract reads it (RE2 accepts it unchanged).
BLOCK_SQL_PATTERN = BLOCK_PATTERN
EXPERT_TENSOR = re.compile(r"\.ffn_(?:up|down|gate|gate_up)_(?:ch|)exps", re.ASCII)
_BLOCK = re.compile(BLOCK_PATTERN, re.ASCII)


def block_of(name: str) -> int | None:
    """The block index of a tensor name (`blk.12.ffn_up_exps.weight` -> 12), or None."""
    match = _BLOCK.match(name)
    return int(match.group(1)) if match else None


def is_expert_tensor(name: str) -> bool:
    """Whether a tensor holds a MoE block's routed experts."""
    return EXPERT_TENSOR.search(name) is not None


def is_host_device(device: str) -> bool:
    """True for buffers in host memory: `CPU*`, pinned `*_Host`, and CPU-side extras."""
    return device.startswith("CPU") or device.endswith("_Host") or device == "AMX"
