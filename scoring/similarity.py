"""Quality preservation: how close an offloaded run's output is to the baseline's.

Both runs use the same prompt, seed and sampling settings, so an engine that
computes the same thing produces the same text. Three measures, from
strictest to most forgiving:

- **Exact match**: the two texts are identical, character for character.
- **Common prefix**: how far the texts agree before they first differ, in
  words and in characters. Sampling is sequential, so after the first
  different token the rest usually differs too; the prefix says how long the
  runs stayed in lock-step.
- **Edit similarity** (0 to 1): 1 − (word-level Levenshtein distance ÷ the
  longer text's word count). Words are the whitespace-separated pieces of the
  text, compared exactly. The distance is the fewest word insertions,
  deletions and substitutions turning one text into the other. 1 means the
  same words in the same order; 0 means nothing in common positionally. Two
  empty texts are identical (1).

Each text is cut to its first 2,000 words before the distance is computed (the
protocol's longest budget, 1,000 tokens, is about 750 words), which bounds the
work on a runaway output; the result records whether a cut happened.
"""

from __future__ import annotations

from dataclasses import dataclass

from rapidfuzz.distance import Levenshtein

from scoring.score import JSONObject, Score

MAX_EDIT_WORDS = 2000


@dataclass(frozen=True)
class Similarity:
    """How a candidate output compares with a baseline output."""

    exact_match: bool
    common_prefix_words: int
    common_prefix_chars: int
    edit_distance_words: int
    edit_similarity: float
    baseline_words: int
    candidate_words: int
    truncated: bool


def compare_outputs(baseline: str, candidate: str) -> Similarity:
    """Compare two outputs (see the module docstring for the measures)."""
    a_words = baseline.split()
    b_words = candidate.split()
    a_cut = a_words[:MAX_EDIT_WORDS]
    b_cut = b_words[:MAX_EDIT_WORDS]
    distance = levenshtein(a_cut, b_cut)
    longest = max(len(a_cut), len(b_cut))
    return Similarity(
        exact_match=baseline == candidate,
        common_prefix_words=_common_prefix(a_words, b_words),
        common_prefix_chars=_common_prefix(baseline, candidate),
        edit_distance_words=distance,
        edit_similarity=1.0 - distance / longest if longest else 1.0,
        baseline_words=len(a_words),
        candidate_words=len(b_words),
        truncated=len(a_words) > MAX_EDIT_WORDS or len(b_words) > MAX_EDIT_WORDS,
    )


def similarity_scores(baseline: str, candidate: str, baseline_request_id: str) -> list[Score]:
    """The comparison as scores of the candidate request, naming its baseline."""
    sim = compare_outputs(baseline, candidate)
    detail: JSONObject = {
        "baseline_request_id": baseline_request_id,
        "baseline_words": sim.baseline_words,
        "candidate_words": sim.candidate_words,
    }
    return [
        Score("same_seed_exact_match", 1.0 if sim.exact_match else 0.0, dict(detail)),
        Score(
            "same_seed_prefix_words",
            float(sim.common_prefix_words),
            detail | {"prefix_chars": sim.common_prefix_chars},
        ),
        Score(
            "same_seed_edit_similarity",
            sim.edit_similarity,
            detail | {"edit_distance_words": sim.edit_distance_words, "truncated": sim.truncated},
        ),
    ]


def levenshtein(a: list[str], b: list[str]) -> int:
    """The fewest insertions, deletions and substitutions turning `a` into `b`.

    rapidfuzz's bit-parallel implementation: measured here on two 750-word
    outputs, 0.14 ms against 206 ms for the textbook dynamic programme in Python.
    """
    return int(Levenshtein.distance(a, b))


def _common_prefix(a: str | list[str], b: str | list[str]) -> int:
    length = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        length += 1
    return length
