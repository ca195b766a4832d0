"""Tiny GGUF files written by hand: the shapes a test needs, zero-filled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
from gguf import GGMLQuantizationType, GGUFWriter

Tensor = tuple[str, npt.NDArray[np.generic], GGMLQuantizationType | None]


def write_gguf(path: Path, arch: str, ints: dict[str, int], tensors: list[Tensor]) -> Path:
    writer = GGUFWriter(path, arch)
    writer.add_string("general.name", f"tiny {arch}")
    for key, value in ints.items():
        writer.add_uint32(f"{arch}.{key}", value)
    for name, data, raw_dtype in tensors:
        writer.add_tensor(name, data, raw_dtype=raw_dtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def f32(*shape: int) -> npt.NDArray[np.float32]:
    return np.zeros(shape, dtype=np.float32)
