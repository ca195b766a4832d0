"""Repetition score and loop detection: what a reader of the report relies on."""

from __future__ import annotations

import string

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.repetition import analyse_repetition, repetition_score, words_of

distinct_words = st.lists(
    st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8),
    min_size=4,
    max_size=12,
    unique=True,
)

# The real failure this project exists to catch: the DeepSeek-MoE baseline in
# Shimmy's own 1.7.0 validation logs ended by echoing its prompt over and over.
ECHO_LOOP = "\n\n" + "Explain quantum computing in simple terms.\n\n" * 11

BINARY_SEARCH = """Binary search is an efficient algorithm for finding a target value in a \
sorted array. Instead of checking every element, it repeatedly divides the search \
interval in half.

1. Start with two pointers, `low` at the first index and `high` at the last index.
2. Compute the middle index: `mid = (low + high) // 2`.
3. Compare the middle element with the target:
   - If they are equal, the search is done and `mid` is returned.
   - If the target is smaller, the target must lie in the left half, so set `high = mid - 1`.
   - If the target is larger, it must lie in the right half, so set `low = mid + 1`.
4. Repeat until `low` is greater than `high`, which means the target is not in the array.

Because each comparison halves the remaining range, binary search runs in O(log n) \
time, compared with O(n) for a linear scan. The trade-off is that the input must \
already be sorted."""

JUG_STEPS = """You have 3-gallon and 5-gallon jugs. Measure exactly 4 gallons step-by-step.

Here is one way to do it:

1. Fill the 5-gallon jug completely.
2. Pour water from the 5-gallon jug into the 3-gallon jug until the 3-gallon jug is full.
3. Empty the 3-gallon jug.
4. Pour the remaining 2 gallons from the 5-gallon jug into the 3-gallon jug.
5. Fill the 5-gallon jug again.
6. Pour water from the 5-gallon jug into the 3-gallon jug until it is full.

Now the 5-gallon jug contains exactly 4 gallons."""

ALTERNATE_JUG_STEPS = """1. Fill the 3-gallon jug.
2. Pour the 3-gallon jug into the 5-gallon jug.
3. Fill the 3-gallon jug.
4. Pour the 3-gallon jug into the 5-gallon jug.
5. Empty the 5-gallon jug.
6. Pour the 3-gallon jug into the 5-gallon jug.
7. Fill the 3-gallon jug.
8. Pour the 3-gallon jug into the 5-gallon jug."""


@settings(max_examples=60, deadline=None)
@given(unit=distinct_words, copies=st.integers(min_value=3, max_value=12))
def test_tiled_text_scores_high_and_is_a_loop(unit: list[str], copies: int) -> None:
    text = " ".join(unit * copies)
    result = analyse_repetition(text)
    total = len(unit) * copies - 3
    # Every window after the first pass of the unit repeats an earlier one.
    assert result.repetition_score == (total - len(unit)) / total
    assert result.repetition_score >= 0.5
    if len(unit) * copies >= 24:
        assert result.loop_detected
        assert result.loop_start_char == 0
        assert result.loop_repeats == copies


@settings(max_examples=60, deadline=None)
@given(words=st.lists(st.text(alphabet=string.ascii_lowercase, min_size=1), unique=True))
def test_text_of_distinct_words_scores_zero(words: list[str]) -> None:
    result = analyse_repetition(" ".join(words))
    assert result.repetition_score == 0.0
    assert not result.loop_detected


@settings(max_examples=200, deadline=None)
@given(text=st.text())
def test_any_text_gives_a_bounded_score_and_a_consistent_loop(text: str) -> None:
    result = analyse_repetition(text)
    assert 0.0 <= result.repetition_score <= 1.0
    if result.loop_detected:
        assert result.loop_start_char is not None and result.loop_span is not None
        assert text[result.loop_start_char :].startswith(result.loop_span)
        assert result.loop_repeats >= 3
    else:
        assert result.loop_start_char is None and result.loop_repeats == 0


def test_a_repeated_sentence_is_a_loop_starting_at_its_first_copy() -> None:
    text = (
        "Sure, I can explain that. The AI felt something new. "
        + "I am happy to help you with that. " * 4
    )
    result = analyse_repetition(text)
    assert result.loop_detected
    assert result.loop_start_char == text.index("I am happy")
    assert result.loop_span == "I am happy to help you with that"
    assert result.loop_repeats == 4


def test_the_prompt_echo_loop_from_the_shimmy_logs_is_flagged() -> None:
    result = analyse_repetition(ECHO_LOOP)
    assert result.loop_detected
    assert result.loop_start_char == 2
    assert result.loop_repeats == 11
    assert result.repetition_score > 0.85


def test_a_normal_explanation_is_not_a_loop() -> None:
    result = analyse_repetition(BINARY_SEARCH)
    assert not result.loop_detected
    assert result.repetition_score < 0.1


def test_a_numbered_list_with_shared_prefixes_and_a_prompt_echo_is_not_a_loop() -> None:
    result = analyse_repetition(JUG_STEPS)
    assert not result.loop_detected
    assert result.repetition_score < 0.35


def test_a_procedure_that_repeats_steps_between_others_is_not_a_loop() -> None:
    assert not analyse_repetition(ALTERNATE_JUG_STEPS).loop_detected


def test_a_list_of_identical_items_is_a_loop() -> None:
    text = "\n".join(f"{i}. Pour the water into the jug." for i in range(1, 6))
    result = analyse_repetition(text)
    assert result.loop_detected
    assert result.loop_repeats == 5


def test_a_long_passage_repeated_back_to_back_is_a_loop() -> None:
    paragraph = (
        "The robot looked at the sunrise and wondered whether the warmth it sensed "
        "was only data or something more. "
    )
    text = "Once upon a time there was a robot.\n\n" + paragraph * 3
    result = analyse_repetition(text)
    assert result.loop_detected
    assert result.loop_kind in ("passage", "sentence")
    assert result.loop_start_char == text.index("The robot")


def test_a_refrain_said_twice_is_not_a_loop() -> None:
    text = "And still, the machine waited for an answer. " * 2 + "Then the door opened."
    assert not analyse_repetition(text).loop_detected


def test_short_texts_score_zero() -> None:
    assert repetition_score("") == 0.0
    assert repetition_score("Hello there!") == 0.0
    assert repetition_score("no no no") == 0.0


def test_words_ignore_case_and_punctuation_and_keep_offsets() -> None:
    text = "Hello, World! Don't stop."
    words = words_of(text)
    assert [w.key for w in words] == ["hello", "world", "don't", "stop"]
    assert [text[w.start : w.end] for w in words] == ["Hello", "World", "Don't", "stop"]


def test_list_numbers_compare_equal_only_when_asked() -> None:
    text = "1. Fill it\n2. Fill it"
    assert [w.key for w in words_of(text)] == ["1", "fill", "it", "2", "fill", "it"]
    assert [w.key for w in words_of(text, number_lists=True)] == ["#", "fill", "it"] * 2


def test_very_long_text_is_analysed_quickly() -> None:
    import time

    text = " ".join(f"w{(i * 7919) % 1000}" for i in range(5000))
    started = time.perf_counter()
    analyse_repetition(text)
    assert time.perf_counter() - started < 5
