"""The timing entry point `nox -s perf` calls: stores generated, sites built, seconds printed."""

from __future__ import annotations

from pathlib import Path

import pytest

from report.timing import main_timing


def test_timing_prints_each_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main_timing(requests=60, chunks=2_000, workdir=tmp_path) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("quick: 36 requests, 600 chunks: ")
    assert out[1].startswith("large: 60 requests, 2,000 chunks: ")
    assert all("mkdocs" in line for line in out)
