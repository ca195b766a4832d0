"""Tokenizer-true output counts, for servers that do not count (Shimmy 1.7.0).

A server's own `/tokenize` (llama-server) counts with the vocabulary it generated
with, so it comes first. Where there is none (Shimmy has no such route; its streams
carry no `usage` and its non-streamed `usage` is 0/0), llama.cpp's `llama-tokenize`
from the engine build counts the output offline on the same GGUF: it loads the
vocabulary only (a fraction of a second, no weights), adds no BOS, expands no
escapes and parses no special-token text, so it counts the text as sent.

Where the binary comes from: the engine the collector built or found for this run,
else the one cached on this machine (~/.cache/moe-evidence/engine/, built by any
default `collect`). Nothing is built for it. Without the binary or the model file the
count is not made, the reason is stored in `requests.tokenizer_error`, and the
metrics fall back to the number of content events, flagged as an estimate.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from collector.engine import EngineBuild, cached_engine

Tokenizer = Literal["server", "llama-tokenize"]
_FLAGS = ("--stdin", "--ids", "--no-bos", "--no-escape", "--no-parse-special", "--log-disable")
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class TokenCount:
    """One output's token count and who counted it; `error` says why nobody did."""

    tokens: int | None = None
    tokenizer: Tokenizer | None = None
    error: str | None = None


class TokenizerError(Exception):
    """llama-tokenize could not count (it failed, or its output was not token ids)."""


@dataclass(frozen=True)
class LlamaTokenize:
    """`llama-tokenize` on one model file."""

    binary: Path
    model: Path

    def count(self, text: str) -> int:
        """The number of tokens `text` is, in the model's own vocabulary."""
        try:
            done = subprocess.run(
                [str(self.binary), "-m", str(self.model), *_FLAGS],
                input=text.encode("utf-8"),
                capture_output=True,
                timeout=_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TokenizerError(f"llama-tokenize did not run: {exc}") from exc
        # The ids are the last line; anything before it is the loader's chatter.
        lines = done.stdout.decode("utf-8", errors="replace").strip().splitlines()
        try:
            ids = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            ids = None
        if done.returncode != 0 or not isinstance(ids, list):
            detail = done.stderr.decode("utf-8", errors="replace").strip().splitlines()
            raise TokenizerError(
                f"llama-tokenize failed on {self.model.name} (exit {done.returncode}): "
                f"{detail[-1] if detail else 'no token ids printed'}"
            )
        return len(ids)


def find_llama_tokenize(engine: EngineBuild | None) -> Path | None:
    """The run's engine's llama-tokenize, else the one cached on this machine."""
    if engine is not None and engine.tokenize is not None:
        return engine.tokenize
    cached = cached_engine()
    return cached.tokenize if cached is not None else None


class OutputCounter:
    """Counts each output: the server's /tokenize first, then llama-tokenize offline."""

    def __init__(self, local: LlamaTokenize | None, missing: str | None) -> None:
        self.local = local
        self.missing = missing  # why there is no local tokenizer

    @classmethod
    def for_model(cls, engine: EngineBuild | None, model: Path | None) -> OutputCounter:
        binary = find_llama_tokenize(engine)
        if binary is None:
            missing = (
                "no llama-tokenize: the engine is not built on this machine (any default "
                "`moe-evidence collect` builds it); token counts are content events"
            )
            return cls(None, missing)
        if model is None or not model.is_file():
            missing = "no model file to tokenize with (attach mode without models.path)"
            return cls(None, missing)
        return cls(LlamaTokenize(binary, model), None)

    def count(self, text: str, server: Callable[[str], int | None] | None) -> TokenCount:
        """Count `text` with `server` (its /tokenize; None: none, or it died), else offline."""
        if server is not None:
            tokens = server(text)
            if tokens is not None:
                return TokenCount(tokens, "server")
        if self.local is None:
            return TokenCount(error=self.missing)
        try:
            return TokenCount(self.local.count(text), "llama-tokenize")
        except TokenizerError as exc:
            return TokenCount(error=str(exc))
