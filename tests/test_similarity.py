"""Quality preservation between a baseline and an offloaded run at the same seed."""

from __future__ import annotations

import time

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.similarity import MAX_EDIT_WORDS, compare_outputs, levenshtein, similarity_scores

BASELINE = "Binary search finds an item in a sorted list by halving the search range each step."
DIVERGED = "Binary search finds an item in a sorted array by halving the search range each step."

word_lists = st.lists(st.sampled_from(["a", "b", "c", "d"]), max_size=12)


def test_identical_outputs_match_exactly() -> None:
    sim = compare_outputs(BASELINE, BASELINE)
    assert sim.exact_match
    assert sim.edit_similarity == 1.0
    assert sim.common_prefix_words == len(BASELINE.split())
    assert sim.common_prefix_chars == len(BASELINE)


def test_outputs_that_diverge_report_where_and_how_much() -> None:
    sim = compare_outputs(BASELINE, DIVERGED)
    assert not sim.exact_match
    assert sim.common_prefix_words == 8
    assert sim.common_prefix_chars == BASELINE.index("list")
    assert sim.edit_distance_words == 1
    assert sim.edit_similarity == 1 - 1 / 16


def test_unrelated_outputs_are_far_apart() -> None:
    sim = compare_outputs("one two three four", "five six seven eight")
    assert sim.edit_similarity == 0.0
    assert sim.common_prefix_words == 0


def test_empty_outputs() -> None:
    assert compare_outputs("", "").edit_similarity == 1.0
    assert compare_outputs("", "something here").edit_similarity == 0.0


def test_levenshtein_textbook_cases() -> None:
    assert levenshtein(list("kitten"), list("sitting")) == 3
    assert levenshtein(list("flaw"), list("lawn")) == 2
    assert levenshtein([], list("abc")) == 3


@settings(max_examples=200, deadline=None)
@given(a=word_lists, b=word_lists, c=word_lists)
def test_levenshtein_is_a_metric(a: list[str], b: list[str], c: list[str]) -> None:
    assert levenshtein(a, b) == levenshtein(b, a)
    assert (levenshtein(a, b) == 0) == (a == b)
    assert levenshtein(a, c) <= levenshtein(a, b) + levenshtein(b, c)
    assert abs(len(a) - len(b)) <= levenshtein(a, b) <= max(len(a), len(b))


@settings(max_examples=100, deadline=None)
@given(a=word_lists, b=word_lists)
def test_edit_similarity_is_between_zero_and_one(a: list[str], b: list[str]) -> None:
    sim = compare_outputs(" ".join(a), " ".join(b))
    assert 0.0 <= sim.edit_similarity <= 1.0


def test_long_outputs_are_cut_and_say_so() -> None:
    long_a = " ".join(f"w{i}" for i in range(MAX_EDIT_WORDS + 500))
    long_b = " ".join(f"v{i}" for i in range(MAX_EDIT_WORDS + 500))
    started = time.perf_counter()
    sim = compare_outputs(long_a, long_b)
    assert time.perf_counter() - started < 15
    assert sim.truncated
    assert sim.baseline_words == MAX_EDIT_WORDS + 500


def test_similarity_scores_name_the_baseline() -> None:
    scores = similarity_scores(BASELINE, DIVERGED, baseline_request_id="req-1")
    assert [s.name for s in scores] == [
        "same_seed_exact_match",
        "same_seed_prefix_words",
        "same_seed_edit_similarity",
    ]
    assert all(s.detail["baseline_request_id"] == "req-1" for s in scores)
    assert scores[1].value == 8.0
