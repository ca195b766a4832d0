"""A model's spec is read from its header once per machine and code, then found by the
file's SHA-256 (collector.spec_cache): the embedded model's header took 3 s to parse at
every campaign and every `advise`."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import pytest

from collector import gguf_inspect, spec_cache
from collector.engine import CACHE_ENV
from collector.gguf_inspect import inspect_model
from tests.support.gguf import Tensor, f32, write_gguf

# 4 MiB of f32 per tensor, 5 of them: above spec_cache.MIN_BYTES (16 MiB).
BIG = [(f"blk.0.t{i}.weight", f32(1024, 1024), None) for i in range(5)]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def _model(path: Path, blocks: int = 1, tensors: list[Tensor] | None = None) -> Path:
    return write_gguf(path, "llama", {"block_count": blocks}, BIG if tensors is None else tensors)


def _unreadable(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_: object) -> None:
        raise AssertionError("the header was parsed again")

    monkeypatch.setattr(gguf_inspect, "GGUFReader", refuse)


def test_the_same_bytes_are_not_parsed_twice_wherever_they_lie(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, cache: Path
) -> None:
    model = _model(tmp_path / "m.gguf")
    assert model.stat().st_size >= spec_cache.MIN_BYTES
    first = inspect_model(model)
    assert len(list((cache / "specs").iterdir())) == 1
    copy = shutil.copyfile(model, tmp_path / "copy.gguf")
    _unreadable(monkeypatch)
    assert inspect_model(model) == first
    again = inspect_model(copy)
    assert again.path == str(copy.resolve())
    assert again == dataclasses.replace(first, path=again.path)


def test_other_bytes_are_parsed(tmp_path: Path) -> None:
    first = inspect_model(_model(tmp_path / "a.gguf", blocks=1))
    second = inspect_model(_model(tmp_path / "b.gguf", blocks=2))
    assert (first.block_count, second.block_count) == (1, 2)


def test_a_small_file_is_not_remembered(tmp_path: Path, cache: Path) -> None:
    inspect_model(_model(tmp_path / "s.gguf", tensors=[("w", f32(4, 4), None)]))
    assert not (cache / "specs").exists()


def test_a_damaged_entry_or_a_folder_that_cannot_be_written_costs_a_parse(
    tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _model(tmp_path / "m.gguf")
    first = inspect_model(model)
    (entry,) = (cache / "specs").iterdir()
    entry.write_text('{"architecture": "llama"', encoding="utf-8")
    assert inspect_model(model) == first  # parsed again, and remembered again
    _unreadable(monkeypatch)
    assert inspect_model(model) == first
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a-file"))
    (tmp_path / "a-file").write_text("not a folder", encoding="utf-8")
    assert inspect_model(model) == first
