"""`moe-evidence score-text`: score text piped on stdin."""

from __future__ import annotations

import io
import json

import pytest

from moe_evidence.cli import main

LOOPING = "Sure.\n\n" + "Explain quantum computing in simple terms.\n\n" * 5


def run_cli(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: list[str], text: str
) -> tuple[int, str]:
    monkeypatch.setattr("sys.stdin", io.StringIO(text))
    code = main(["score-text", *argv])
    return code, capsys.readouterr().out


def test_human_readable_output_names_the_loop(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(monkeypatch, capsys, [], LOOPING)
    assert code == 0
    assert "loop_detected: true" in out
    assert f"loop_start_char: {LOOPING.index('Explain')}" in out
    assert "repetition_score: 0." in out


def test_json_output_for_clean_text(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out = run_cli(monkeypatch, capsys, ["--json"], "Hello! How can I help you today?")
    assert code == 0
    result = json.loads(out)
    assert result["repetition_score"] == 0.0
    assert result["loop_detected"] is False
    assert result["loop_start_char"] is None
    assert "check" not in result


def test_with_a_test_id_the_check_is_included(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = "```python\ndef factorial(n):\n    return 1 if n == 0 else n * factorial(n - 1)\n```"
    code, out = run_cli(monkeypatch, capsys, ["--json", "--test", "code-generation"], answer)
    assert code == 0
    check = json.loads(out)["check"]
    assert check["passed"] is True
    assert check["detail"]["passed_cases"] == 3

    code, out = run_cli(monkeypatch, capsys, ["--test", "technical-explanation"], "Binary search.")
    assert code == 0
    assert "check (technical-explanation, coverage): fail" in out
    assert "missing concepts: sorted input" in out


def test_an_unknown_test_id_is_one_line_naming_the_known_ones(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO("text"))
    assert main(["score-text", "--test", "poetry"]) == 1
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: unknown test 'poetry'; known: simple-response,")
