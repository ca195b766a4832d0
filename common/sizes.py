"""Memory sizes as people write them ("160MiB", "8 GiB", "24GB") and as stored (bytes).

Binary units (KiB, MiB, GiB, TiB, and the bare K, M, G, T that llama.cpp and
`ulimit` use) are powers of 1024; decimal units (kB, MB, GB, TB) powers of 1000,
because a card sold as "24 GB" and a driver reporting "24576 MiB" must both be
read as their writers meant. A bare number is bytes.
"""

from __future__ import annotations

import math
import re

MIB = 1 << 20

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1 << 10,
    "kib": 1 << 10,
    "m": 1 << 20,
    "mib": 1 << 20,
    "g": 1 << 30,
    "gib": 1 << 30,
    "t": 1 << 40,
    "tib": 1 << 40,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
}

_SIZE = re.compile(r"\s*(?P<number>[0-9]+(?:\.[0-9]+)?)\s*(?P<unit>[a-zA-Z]*)\s*")


def parse_size(text: str) -> int:
    """Bytes in `text` ("160MiB", "1.5 GiB", "24GB", "4096"); ValueError saying what is
    accepted when it is not a positive size."""
    match = _SIZE.fullmatch(text)
    unit = match["unit"].lower() if match else ""
    if match is None or unit not in _UNITS:
        raise ValueError(
            f"{text!r} is not a size; write it like 160MiB, 8GiB or 24GB "
            "(KiB/MiB/GiB and K/M/G are 1024-based, kB/MB/GB 1000-based)"
        )
    value = float(match["number"]) * _UNITS[unit]
    if not math.isfinite(value) or value < 1:
        raise ValueError(f"{text!r} is not a positive size")
    return int(value)


def mib(n_bytes: float) -> str:
    """`n_bytes` as people read a device size: "160 MiB", "98.7 MiB", "23.5 GiB"."""
    if n_bytes >= 1 << 30 and n_bytes % (1 << 30) == 0:
        return f"{n_bytes / (1 << 30):g} GiB"
    value = n_bytes / MIB
    return f"{value:,.0f} MiB" if value == int(value) or value >= 1000 else f"{value:,.1f} MiB"
