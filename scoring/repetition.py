"""Repetition score and loop detection.

Both work on the *words* of a response: runs of letters and digits (an
apostrophe inside a word, as in "don't", keeps it one word), lower-cased.
Punctuation, Markdown markup and whitespace are ignored, so "Hello, World!"
and "hello world" are the same two words.

**Repetition score** (0 to 1). The text is cut into overlapping 4-word
windows ("word 4-grams"): a 10-word text has 7 of them. The score is the share
of those windows that already occurred earlier in the same text. Text with no
repeated phrase scores 0; a text that keeps saying the same thing approaches 1
(a 6-word sentence said 10 times scores 0.89). A text of fewer than 4 words
has no windows and scores 0. Ordinary prose reuses some phrases ("the middle
element of the array"), so a few percent is normal; boiler-plate heavy
answers such as API documentation score higher than stories.

**Loop.** A loop is the failure the protocol's temperature was chosen to
avoid: the model gets stuck and emits the same passage again and again. A
loop is reported when either holds:

1. *A repeated passage*: some passage of words is followed immediately by
   itself, at least 3 copies in a row, and the copies together cover at least
   24 words. So an 8-word passage needs 3 back-to-back copies, a 4-word one 6
   copies, a single word 24.
2. *A repeated sentence*: the same sentence of at least 3 words appears at
   least 3 times in a row (sentences end at `.`, `!`, `?` or a line break).

List numbering is ignored when comparing ("3. Pour the water" equals "4. Pour
the water"), so a list whose items are all the same is a loop. What is *not* a
loop: echoing the prompt once, a numbered list whose items begin alike but go
on differently ("1. Fill the 5-gallon jug", "2. Pour the 5-gallon jug ..."),
and a step that legitimately recurs in a procedure with other steps between
its occurrences. Only back-to-back repetition counts; scattered repetition is
what the repetition score measures. Passages longer than 300 words are not
searched for, which bounds the work on very long texts.

The loop's start is the character offset in the original text of the first
word of the first copy; the reported unit is that first copy's text, and the
repeat count is the number of whole back-to-back copies.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from scoring.score import JSONObject, clip_text

NGRAM = 4
MIN_LOOP_COPIES = 3
MIN_LOOP_WORDS = 24
MIN_SENTENCE_WORDS = 3
MAX_LOOP_UNIT_WORDS = 300

_WORD = re.compile(r"[^\W_]+(?:['’][^\W_]+)*")
# A list marker at the start of a line: "3.", "3)", "Step 3:", "**Step 3:**".
_LIST_NUMBER = re.compile(
    r"^[ \t>*_#-]*(?:step[ \t]+)?(\d+)(?=[.):*])", re.IGNORECASE | re.MULTILINE
)
_SENTENCE_END = re.compile(r"[.!?]+(?=\s|$)|\n")
_NUMBER_KEY = "#"


@dataclass(frozen=True)
class Word:
    """A word of the text: its comparison key and where it sits in the original."""

    key: str
    start: int
    end: int


@dataclass(frozen=True)
class RepetitionResult:
    """The repetition score and loop verdict for one text."""

    repetition_score: float
    loop_detected: bool
    loop_start_char: int | None
    loop_span: str | None
    loop_repeats: int
    loop_kind: Literal["passage", "sentence"] | None
    words: int
    ngrams: int
    repeated_ngrams: int

    def as_detail(self) -> JSONObject:
        """The result as a JSON-able dict (the loop unit shortened for storage)."""
        return {
            "repetition_score": self.repetition_score,
            "loop_detected": self.loop_detected,
            "loop_start_char": self.loop_start_char,
            "loop_span": None if self.loop_span is None else clip_text(self.loop_span, 300),
            "loop_repeats": self.loop_repeats,
            "loop_kind": self.loop_kind,
            "words": self.words,
            "ngrams": self.ngrams,
            "repeated_ngrams": self.repeated_ngrams,
        }


@dataclass(frozen=True)
class _Loop:
    start_word: int
    end_word: int  # exclusive: the first copy is words[start_word:end_word]
    copies: int
    kind: Literal["passage", "sentence"]


def words_of(text: str, *, number_lists: bool = False) -> list[Word]:
    """Split `text` into lower-cased words with their character offsets.

    With `number_lists`, a list item's leading number becomes "#", so items
    that differ only in their numbering compare equal.
    """
    list_numbers = {m.start(1) for m in _LIST_NUMBER.finditer(text)} if number_lists else set[int]()
    return [
        Word(_NUMBER_KEY if m.start() in list_numbers else m.group().lower(), m.start(), m.end())
        for m in _WORD.finditer(text)
    ]


def repetition_score(text: str) -> float:
    """The share of the text's word 4-grams that repeat an earlier one (0 to 1)."""
    return analyse_repetition(text).repetition_score


def analyse_repetition(text: str) -> RepetitionResult:
    """Score `text` for repetition and look for a loop (see the module docstring)."""
    keys = [w.key for w in words_of(text)]
    ngrams, repeated = _repeated_ngrams(keys)
    numbered = words_of(text, number_lists=True)
    loop = _earliest_loop(numbered, text)
    if loop is None:
        return RepetitionResult(
            repetition_score=repeated / ngrams if ngrams else 0.0,
            loop_detected=False,
            loop_start_char=None,
            loop_span=None,
            loop_repeats=0,
            loop_kind=None,
            words=len(keys),
            ngrams=ngrams,
            repeated_ngrams=repeated,
        )
    start_char = numbered[loop.start_word].start
    return RepetitionResult(
        repetition_score=repeated / ngrams if ngrams else 0.0,
        loop_detected=True,
        loop_start_char=start_char,
        loop_span=text[start_char : numbered[loop.end_word - 1].end],
        loop_repeats=loop.copies,
        loop_kind=loop.kind,
        words=len(keys),
        ngrams=ngrams,
        repeated_ngrams=repeated,
    )


def _repeated_ngrams(keys: list[str]) -> tuple[int, int]:
    seen: set[tuple[str, ...]] = set()
    total = repeated = 0
    for i in range(len(keys) - NGRAM + 1):
        gram = tuple(keys[i : i + NGRAM])
        total += 1
        if gram in seen:
            repeated += 1
        else:
            seen.add(gram)
    return total, repeated


def _earliest_loop(words: list[Word], text: str) -> _Loop | None:
    candidates = [
        loop for loop in (_passage_loop(words), _sentence_loop(words, text)) if loop is not None
    ]
    if not candidates:
        return None
    return min(candidates, key=lambda loop: (loop.start_word, -loop.copies))


def _passage_loop(words: list[Word]) -> _Loop | None:
    """The earliest back-to-back repeated passage, preferring the shortest unit.

    For each unit length p, `run` counts how many consecutive positions from i
    on satisfy key[j] == key[j + p]; a run of r means words[i : i + r + p] is
    made of copies of its first p words, (r + p) // p whole copies.
    """
    ids = _interned(words)
    n = len(ids)
    best: _Loop | None = None
    for p in range(1, min(MAX_LOOP_UNIT_WORDS, n // MIN_LOOP_COPIES) + 1):
        needed = max(MIN_LOOP_COPIES, -(-MIN_LOOP_WORDS // p))
        run = 0
        found: tuple[int, int] | None = None
        for i in range(n - p - 1, -1, -1):
            run = run + 1 if ids[i] == ids[i + p] else 0
            copies = (run + p) // p
            if copies >= needed:
                found = (i, copies)
        if found is not None and (best is None or found[0] < best.start_word):
            best = _Loop(found[0], found[0] + p, found[1], "passage")
    return best


def _sentence_loop(words: list[Word], text: str) -> _Loop | None:
    """The earliest sentence of 3+ words that is said 3+ times in a row."""
    sentences: list[tuple[int, int, tuple[str, ...]]] = []  # (first word, end word, keys)
    word_index = 0
    for end_char in [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]:
        first = word_index
        while word_index < len(words) and words[word_index].start < end_char:
            word_index += 1
        if word_index > first:
            sentences.append((first, word_index, tuple(w.key for w in words[first:word_index])))
    i = 0
    while i < len(sentences):
        j = i + 1
        while j < len(sentences) and sentences[j][2] == sentences[i][2]:
            j += 1
        if j - i >= MIN_LOOP_COPIES and len(sentences[i][2]) >= MIN_SENTENCE_WORDS:
            return _Loop(sentences[i][0], sentences[i][1], j - i, "sentence")
        i = j
    return None


def _interned(words: list[Word]) -> list[int]:
    table: dict[str, int] = {}
    return [table.setdefault(w.key, len(table)) for w in words]
