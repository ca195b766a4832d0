"""Shimmy 1.7.0 as it really behaves, met by the real collector.

The calibration server's Shimmy mode (calibration.shimmy) plays what Shimmy's v1.7.0 source
does: a model load per request with its loader log, axum's SSE framing of bare tokens, chat
chunks that end "stop" whatever happened, no usage (0/0 when not streamed), no /tokenize. The
collector must store every output byte for byte, the finish reason as the server said it and
as inferred, and token counts from the model's own tokenizer (llama-tokenize, offline).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from collector.engine import EngineBuild
from collector.tokenizer import LlamaTokenize
from evidence.metrics import create_views
from evidence.store import open_store
from tests.support.cli import ROOT, cli_env, query

# Tokens as a real model streams them: leading spaces or none, newlines alone and inside a
# token, indentation, multi-byte UTF-8, text that looks like SSE or JSON.
TOKENS = (
    "Hello", ",", " world", "!\n", "\n", "  two spaces", "x\ny", "é", " 日本語", " 🙂",
    '{"k": 1}', "data: z", " [DONE] ", "\ttab", " ", "end.",
)  # fmt: skip
TEXT = "".join(TOKENS)
TEST = "simple-response"


def _metrics(db: Path, columns: str, order: str = "m.request_id") -> list[tuple[Any, ...]]:
    """`columns` of request_metrics m joined with requests r, from the store at `db`."""
    with open_store(db, read_only=True) as con:
        create_views(con)
        return con.execute(
            f"SELECT {columns} FROM request_metrics m JOIN requests r USING (request_id) "
            f"ORDER BY {order}"
        ).fetchall()


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
    done = subprocess.run(
        [sys.executable, "-m", "moe_evidence", "collect", "--quick", "--config", str(config),
         "--db", str(db)],
        capture_output=True, text=True, timeout=300, cwd=ROOT, env=cli_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    rows = _metrics(db, "r.output_text, r.tokenizer, r.tokenized_output_tokens, m.token_source, "
                    "m.finish_reason, m.finish_reason_inferred, m.completed")  # fmt: skip
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
