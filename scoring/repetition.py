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

*A copy cut off by the end of the text* counts towards those 3 copies (and
its words towards the 24) when it holds at least half of the passage's words,
never fewer than 3 words, and 12 words are always enough. A loop usually runs
until the token budget stops it, so "two whole copies and most of a third"
is the common shape of a loop in a budget-limited answer. The text must end
inside that copy: only punctuation or whitespace may follow it, and its last
word may be cut off mid-word ("...warmth of a new emo"). Why those numbers:
two whole copies alone are a refrain said twice, which is not a loop, and a
sentence that merely begins like the passage ("And still, the ...") shares
only a word or three with it; half the passage, or a dozen words in a row of
a long one, is more than such an opening shares by chance.

List numbering is ignored when comparing ("3. Pour the water" equals "4. Pour
the water"), so a list whose items are all the same is a loop, and so is a
list that is restarted with its numbering carried on. What is *not* a
loop: echoing the prompt once, restating a sentence once in a summary, a
numbered list whose items begin alike but go on differently ("1. Fill the
5-gallon jug", "2. Pour the 5-gallon jug ..."), and a step that legitimately
recurs in a procedure with other steps between its occurrences. Only
back-to-back repetition counts; scattered repetition is what the repetition
score measures. Passages longer than 300 words are not searched for, which
bounds the work on very long texts.

The loop's start is the character offset in the original text of the first
word of the first copy; the reported unit is that first copy's text, and the
repeat count is the number of whole back-to-back copies. The words of one
copy and the words of a counted unfinished last copy (0 when there is none)
are reported too: 2 whole copies of a 50-word passage and 20 words of a third
are 2.4 copies.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from scoring.score import JSONObject, clip_text

NGRAM = 4
MIN_LOOP_COPIES = 3
MIN_LOOP_WORDS = 24
MIN_SENTENCE_WORDS = 3
MAX_LOOP_UNIT_WORDS = 300
CUT_COPY_SHARE = 0.5
MIN_CUT_COPY_WORDS = 3
ENOUGH_CUT_COPY_WORDS = 12

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
    loop_unit_words: int = 0  # words in one copy of the loop's unit
    loop_partial_words: int = 0  # words of the unfinished copy the text stops in, if counted

    def as_detail(self) -> JSONObject:
        """The result as a JSON-able dict (the loop unit shortened for storage)."""
        return {
            "repetition_score": self.repetition_score,
            "loop_detected": self.loop_detected,
            "loop_start_char": self.loop_start_char,
            "loop_span": None if self.loop_span is None else clip_text(self.loop_span, 300),
            "loop_repeats": self.loop_repeats,
            "loop_kind": self.loop_kind,
            "loop_unit_words": self.loop_unit_words,
            "loop_partial_words": self.loop_partial_words,
            "words": self.words,
            "ngrams": self.ngrams,
            "repeated_ngrams": self.repeated_ngrams,
        }


@dataclass(frozen=True)
class _Loop:
    start_word: int
    end_word: int  # exclusive: the first copy is words[start_word:end_word]
    copies: int  # whole copies
    kind: Literal["passage", "sentence"]
    partial_words: int = 0  # words of the counted unfinished copy that ends the text


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


def cut_copy_words_needed(unit_words: int) -> int:
    """How many words an unfinished last copy of a `unit_words`-word passage needs to count.

    Half the passage, at least 3 words and at most 12 (see the module docstring).
    """
    half = math.ceil(unit_words * CUT_COPY_SHARE)
    return min(max(half, MIN_CUT_COPY_WORDS), ENOUGH_CUT_COPY_WORDS)


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
        loop_unit_words=loop.end_word - loop.start_word,
        loop_partial_words=loop.partial_words,
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
        loop
        for loop in (_passage_loop(words, text), _sentence_loop(words, text))
        if loop is not None
    ]
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda loop: (
            loop.start_word,
            -loop.copies,
            not _whole_copies_suffice(loop),
            -loop.partial_words,
        ),
    )


def _whole_copies_suffice(loop: _Loop) -> bool:
    # Between readings of one loop, the one that is a loop without its unfinished copy
    # keeps the kind that texts not cut by the budget always got.
    if loop.kind == "sentence":
        return loop.copies >= MIN_LOOP_COPIES
    words = loop.copies * (loop.end_word - loop.start_word)
    return loop.copies >= MIN_LOOP_COPIES and words >= MIN_LOOP_WORDS


def _passage_loop(words: list[Word], text: str) -> _Loop | None:
    """The earliest back-to-back repeated passage, preferring the shortest unit.

    For each unit length p, byte i of `same` is 1 when word i equals word
    i + p. A run of r such positions from i on means words[i : i + r + p] is
    made of copies of its first p words: (r + p) // p whole ones, and when the
    run reaches the end of the text, (r + p) % p words of an unfinished one.
    numpy compares and bytes searches find the runs: a ~900-word text takes
    ~1 ms here, where a Python loop over every (p, i) took ~35 ms.
    """
    ids = np.array(_interned(words), dtype=np.int64)
    n = len(ids)
    cut_last = _last_word_is_cut(words, text)
    best: _Loop | None = None
    for p in range(1, min(MAX_LOOP_UNIT_WORDS, n // 2) + 1):
        same = (ids[:-p] == ids[p:]).tobytes()
        stump = cut_last and _is_cut_off(words[-1].key, words[-1 - p].key)
        for loop in (_cut_copies(same, p, stump), _whole_copies(same, p)):
            if loop is not None and (best is None or loop.start_word < best.start_word):
                best = loop
    return best


def _whole_copies(same: bytes, p: int) -> _Loop | None:
    """The earliest run of enough whole copies of a p-word unit (rule 1)."""
    needed = max(MIN_LOOP_COPIES, -(-MIN_LOOP_WORDS // p))
    start = same.find(b"\x01" * ((needed - 1) * p))
    if start < 0:
        return None
    end = same.find(0, start)
    run = (len(same) if end < 0 else end) - start
    return _Loop(start, start + p, (run + p) // p, "passage")


def _cut_copies(same: bytes, p: int, stump: bool) -> _Loop | None:
    """Copies of a p-word unit that run to the end of the text, an unfinished one counted.

    With `stump`, the text's last word is its copy's word cut off mid-word:
    it matches, but leaves its copy unfinished.
    """
    if stump:
        same = same[:-1] + b"\x01"
    length = len(same) - len(same.rstrip(b"\x01")) + p
    whole, partial = divmod(length, p)
    if stump and partial == 0:
        whole, partial = whole - 1, p
    if whole + 1 < MIN_LOOP_COPIES or partial < cut_copy_words_needed(p) or length < MIN_LOOP_WORDS:
        return None
    start = len(same) + p - length
    return _Loop(start, start + p, whole, "passage", partial)


def _sentence_loop(words: list[Word], text: str) -> _Loop | None:
    """The earliest sentence of 3+ words said 3+ times in a row (an unfinished last one counted)."""
    sentences: list[tuple[int, int, tuple[str, ...]]] = []  # (first word, end word, keys)
    word_index = 0
    for end_char in [m.end() for m in _SENTENCE_END.finditer(text)] + [len(text)]:
        first = word_index
        while word_index < len(words) and words[word_index].start < end_char:
            word_index += 1
        if word_index > first:
            sentences.append((first, word_index, tuple(w.key for w in words[first:word_index])))
    cut = _cut_sentence(sentences, _last_word_is_cut(words, text))
    i = 0
    while i < len(sentences):
        j = i + 1
        while j < len(sentences) and sentences[j][2] == sentences[i][2]:
            j += 1
        if j - i >= MIN_LOOP_COPIES and len(sentences[i][2]) >= MIN_SENTENCE_WORDS:
            # The same run with an unfinished copy after it says more.
            if cut is not None and cut.start_word == sentences[i][0]:
                return cut
            return _Loop(sentences[i][0], sentences[i][1], j - i, "sentence")
        i = j
    return cut


def _cut_sentence(
    sentences: list[tuple[int, int, tuple[str, ...]]], cut_last: bool
) -> _Loop | None:
    """The sentences before the last said over and over, the last an unfinished copy of them."""
    if len(sentences) < MIN_LOOP_COPIES:
        return None
    partial = sentences[-1][2]
    unit = sentences[-2][2]
    first = len(sentences) - 2
    while first > 0 and sentences[first - 1][2] == unit:
        first -= 1
    whole = len(sentences) - 1 - first
    if (
        whole + 1 < MIN_LOOP_COPIES
        or len(unit) < MIN_SENTENCE_WORDS
        or len(partial) < cut_copy_words_needed(len(unit))
        or not _is_unfinished_copy(partial, unit, cut_last)
    ):
        return None
    return _Loop(sentences[first][0], sentences[first][1], whole, "sentence", len(partial))


def _is_unfinished_copy(partial: tuple[str, ...], unit: tuple[str, ...], cut_last: bool) -> bool:
    """Whether `partial` is the start of `unit`, short of all of it."""
    k = len(partial)
    if k > len(unit) or partial[:-1] != unit[: k - 1]:
        return False
    if partial[-1] == unit[k - 1]:
        return k < len(unit)
    return cut_last and _is_cut_off(partial[-1], unit[k - 1])


def _last_word_is_cut(words: list[Word], text: str) -> bool:
    # A budget can stop a loop mid-word; a word that ends the text may be such a stump.
    return bool(words) and words[-1].end == len(text)


def _is_cut_off(stump: str, word: str) -> bool:
    return len(stump) < len(word) and word.startswith(stump)


def _interned(words: list[Word]) -> list[int]:
    table: dict[str, int] = {}
    return [table.setdefault(w.key, len(table)) for w in words]
