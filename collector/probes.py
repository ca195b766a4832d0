"""Speed probes: the requests of the `--n-cpu-moe` curve (prefill and decode per K).

The protocol's prompts are all short, so its time to first token says nothing about
a long prompt, where offload costs most. A probe is a request whose prompt has a
chosen length in tokens and whose answer has a fixed token budget: its prefill rate
(the server's `timings`, else prompt tokens / TTFT) is measured at that length, and
its decode rate after that prompt (decode at depth). Probes are not protocol tests:
they are stored in `tests` with their own category, never scored for quality, never
paired with a baseline, and the protocol's pause between tests does not apply.

The prompt is deterministic text of common English words (most are one token in a
byte-pair vocabulary, so the length in tokens is near the nominal one); the length
each request really had is what the store keeps (`timings.prompt_n`, usage) and what
the report shows. `campaign.cache_prompt = false` (the default) makes every repeat
process its whole prompt.
"""

from __future__ import annotations

import random

from collector.protocol import PROTOCOL, ProtocolTest
from evidence.metrics import PROBE_CATEGORY

__all__ = ["PROBE_CATEGORY", "probe_id", "probe_prompt", "probe_tests"]

_INSTRUCTION = "Summarize the following notes in one short paragraph.\n\n"
# Short, frequent words: single tokens in the vocabularies of the models we serve.
_WORD_TEXT = (
    "the a of and to in is it that for on with as was at by this be from or are an "
    "but not have had one all were we when there can more if no out so what up time "
    "about into than them only other new some could these two may first then do any "
    "like my now over such our man me even most made after also did many before "
    "must through back years where much your way well down should because each just "
    "those people how too little state good very make world still own see men work "
    "long get here between both life being under never day same another know while "
    "last might us great old year off come since against go came right used take "
    "three "
)
_WORDS = tuple(_WORD_TEXT.split())
_SENTENCE_WORDS = 12


def probe_id(prompt_tokens: int) -> str:
    """The test id of the probe with a prompt of about `prompt_tokens` tokens."""
    return f"prefill-{prompt_tokens}"


def probe_prompt(prompt_tokens: int) -> str:
    """About `prompt_tokens` tokens: an instruction, then numbered notes of common
    words (the same text for the same length, on every machine)."""
    rng = random.Random(prompt_tokens)
    # The instruction is ~12 tokens; each sentence ~_SENTENCE_WORDS + 1 (its period).
    words_left = max(prompt_tokens - 12, _SENTENCE_WORDS)
    sentences: list[str] = []
    while words_left > 0:
        n = min(_SENTENCE_WORDS, words_left)
        words = [rng.choice(_WORDS) for _ in range(n)]
        sentences.append(" ".join(words).capitalize() + ".")
        words_left -= n + 1
    return _INSTRUCTION + " ".join(sentences)


def probe_tests(prompt_tokens: list[int], decode_tokens: int) -> tuple[ProtocolTest, ...]:
    """The probes of a sweep, numbered after the protocol's tests."""
    first = len(PROTOCOL.tests) + 1
    return tuple(
        ProtocolTest(
            test_id=probe_id(n),
            ordinal=first + i,
            category=PROBE_CATEGORY,
            prompt=probe_prompt(n),
            max_tokens=decode_tokens,
            success_criteria=(
                f"none: a speed probe (prefill of about {n} prompt tokens, then "
                f"{decode_tokens} tokens of decode), not scored"
            ),
        )
        for i, n in enumerate(prompt_tokens)
    )
