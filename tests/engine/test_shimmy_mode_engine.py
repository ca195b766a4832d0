"""Shimmy 1.7.0 mode with a real model: llama-tokenize counts the text as sent, and a
launched Shimmy-mode server's outputs are counted by it (the collector side, without a
model, is tests/test_shimmy_mode.py)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from collector.engine import EngineBuild
from collector.tokenizer import LlamaTokenize
from tests.support.cli import collect, query, request_metrics

TEST = "simple-response"


@pytest.mark.engine
def test_llama_tokenize_counts_the_text_as_sent(engine: EngineBuild, moe_model: Path) -> None:
    assert engine.tokenize is not None
    tool = LlamaTokenize(engine.tokenize, moe_model)
    assert tool.count("") == 0
    # No BOS, no escape expansion (a literal backslash-n is two characters), no special tokens.
    assert tool.count(" Hello world\n\ndef é") == 6
    assert tool.count("a\\nb") == 3
    assert tool.count("<|im_end|>") > 1


@pytest.mark.engine
def test_a_launched_shimmy_is_counted_by_llama_tokenize(
    engine: EngineBuild, moe_model: Path, tmp_path: Path
) -> None:
    scenario = tmp_path / "scenario.json"
    scenario.write_text('{"tokens": 100, "gap_s": 0.001}', encoding="utf-8")
    python = sys.executable.replace("\\", "/")
    command = [python, "-m", "calibration.server", "--port", "{port}", "--shimmy-1.7.0",
               "--load-s", "0.2", "--scenario", scenario.as_posix()]  # fmt: skip
    config = tmp_path / "shimmy.toml"
    config.write_text(
        "[campaign]\nrepeats = 1\npause_s = 0\nidle_window_s = 0\n"
        f'tests = ["{TEST}"]\n\n'
        f'[server]\nmode = "launch"\ncommand = {command!r}\napi = "openai-chat"\n\n'
        '[[configurations]]\nlabel = "baseline"\n\n'
        f'[[models]]\nlabel = "smollm2-moe"\npath = "{moe_model.as_posix()}"\n',
        encoding="utf-8",
    )
    db = tmp_path / "e.duckdb"
    done = collect("--quick", "--config", str(config), "--db", str(db), timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    columns = ("r.output_text, r.tokenizer, r.tokenized_output_tokens, m.token_source, "
               "m.finish_reason, m.finish_reason_inferred, m.completed")  # fmt: skip
    rows = request_metrics(db, columns)
    (log,) = query(db, "SELECT log_text FROM server_runs")[0]
    tool = LlamaTokenize(engine.tokenize or Path(), moe_model)
    assert len(rows) == 2
    for text, tokenizer, tokens, source, finish, inferred, completed in rows:
        assert tokenizer == "llama-tokenize" and tokens == tool.count(text)
        assert source == "tokenize"
        # 32 words of 100 by the quick budget: the server said "stop", the count says length.
        assert (finish, inferred, completed) == ("stop", "length", True)
    # The per-request loads reached the server's captured log: warm-up + 2 requests.
    assert log.count("llama_context: graph splits = ") == 3
