"""Repetition score and loop detection: what a reader of the report relies on."""

from __future__ import annotations

import string
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scoring.repetition import (
    analyse_repetition,
    cut_copy_words_needed,
    repetition_score,
    words_of,
)

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


# Loops stopped by the token budget inside a further copy. The first is the shape
# DeepSeek-MoE-16B-chat produces at low max_tokens: the whole answer, then the
# whole answer again (the model re-wraps its lines the second time), then the
# start of a third copy cut off mid-word.
MOE_ANSWER = """Quantum computing is a new kind of computing that uses the rules of quantum \
physics to process information. A normal computer stores information in bits, and each bit \
is either 0 or 1. A quantum computer uses qubits instead.

Here are the key ideas:

1. **Superposition**: a qubit can be 0 and 1 at the same time, so a quantum computer can \
explore many possibilities at once.
2. **Entanglement**: two qubits can be linked, so that measuring one tells you about the other.
3. **Interference**: quantum algorithms combine these possibilities so that wrong answers \
cancel out and right answers add up.

Quantum computers are not faster at everything, but for some problems, such as simulating \
molecules or breaking certain codes, they could be much faster than any normal computer."""

MOE_ANSWER_REWRAPPED = """Quantum computing is a new kind of computing that uses the rules
of quantum physics to process information. A normal computer stores information in bits,
and each bit is either 0 or 1. A quantum computer uses qubits instead.
Here are the key ideas:
1.  **Superposition**: a qubit can be 0 and 1 at the same time, so a quantum computer
    can explore many possibilities at once.
2.  **Entanglement**: two qubits can be linked, so that measuring one tells you about
    the other.
3.  **Interference**: quantum algorithms combine these possibilities so that wrong
    answers cancel out and right answers add up.

Quantum computers are not faster at everything, but for some problems, such as
simulating molecules or breaking certain codes, they could be much faster than any
normal computer."""

MOE_LOOP_CUT = (
    " Sure! Let me explain it simply.\n\n"
    + MOE_ANSWER
    + "\n\n"
    + MOE_ANSWER_REWRAPPED
    + "\n\n"
    + MOE_ANSWER[: MOE_ANSWER.index("information in bits") + len("information in bi")]
)

STORY_PARAGRAPH = """Every night, when the last engineer had gone home, Unit 7 rolled to the \
window and watched the city lights flicker on one by one. It did not know why it did this. \
There was no task in its memory that required it, no line of code that asked for it, and yet \
each time a new light appeared, something in its circuits grew warm and quiet, like a held \
breath."""

# A story that loops one paragraph 2.4 times, stopped by the budget.
STORY_LOOP_CUT = (
    "# The Robot Who Watched the Lights\n\n"
    "Unit 7 was built to sort parcels in a warehouse on the edge of the city. For three years "
    "it did exactly that, moving boxes from one belt to another without a single error.\n\n"
    + STORY_PARAGRAPH
    + "\n\n"
    + STORY_PARAGRAPH
    + "\n\n"
    + " ".join(STORY_PARAGRAPH.split()[:28])
)

TCP_STEPS = """1. The client sends a SYN segment with a random initial sequence number.
2. The server answers with a SYN-ACK segment that acknowledges the client's number and \
carries its own.
3. The client sends an ACK segment, and the connection is established.
This exchange is called the three-way handshake.
"""

# A technical answer that restarts its list, numbering carried on, until the budget stops it.
TCP_LIST_LOOP_CUT = (
    "TCP opens a connection with three messages before any data is sent:\n\n"
    + TCP_STEPS
    + TCP_STEPS.replace("1.", "4.").replace("2.", "5.").replace("3.", "6.")
    + "7. The client sends a SYN segment with a random initial sequence num"
)

PRIME_ANSWER = """```python
def is_prime(n):
    if n < 2:
        return False
    for i in range(2, int(n ** 0.5) + 1):
        if n % i == 0:
            return False
    return True
```

This function returns True when n has no divisor between 2 and its square root.

"""

CODE_LOOP_CUT = (
    "Here is a Python function that checks whether a number is prime:\n\n"
    + PRIME_ANSWER * 2
    + PRIME_ANSWER[: PRIME_ANSWER.index("range(2, int(n")]
)

# A closing sentence said twice and cut in its third go: too few words for a
# passage (2 x 9 + 5 < 24), a loop of a sentence.
SHORT_SENTENCE_LOOP_CUT = (
    "The capital of Australia is Canberra, not Sydney, as many people assume. "
    "Canberra was chosen as a compromise between Sydney and Melbourne.\n\n"
    + "Let me know if you have any other questions. " * 2
    + "Let me know if you"
)

# Normal answers of similar length, each of which a budget may cut anywhere.
SUMMARY_RESTATES_A_SENTENCE = """Photosynthesis is the process by which plants turn light, water \
and carbon dioxide into sugar and oxygen.

It takes place in the chloroplasts, small structures inside leaf cells that contain the green \
pigment chlorophyll. Chlorophyll absorbs red and blue light and uses its energy to split water \
molecules. This releases oxygen, which the plant gives off through tiny pores called stomata. \
The energy captured from light is stored for a short time in two molecules, ATP and NADPH.

In the second stage, the Calvin cycle, the plant uses ATP and NADPH to fix carbon dioxide from \
the air into a three-carbon sugar. Some of this sugar becomes glucose, which the plant burns \
for energy or links into starch and cellulose.

In short: photosynthesis is the process by which plants turn light, water and carbon dioxide \
into sugar and oxygen."""

STEP_LIST = """To set up a Python virtual environment:

Step 1: Open a terminal in your project folder.
Step 2: Run `python -m venv .venv` to create the environment.
Step 3: Activate it with `source .venv/bin/activate` on Linux or macOS.
Step 4: Activate it with `.venv\\Scripts\\activate` on Windows.
Step 5: Install your dependencies with `pip install -r requirements.txt`.
Step 6: Run `deactivate` when you are done working in the project."""

CODE_SIMILAR_LINES = """Here are unit tests for the `add` function:

```python
import unittest

from calc import add


class TestAdd(unittest.TestCase):
    def test_small_numbers(self):
        self.assertEqual(add(1, 2), 3)
        self.assertEqual(add(2, 2), 4)
        self.assertEqual(add(2, 3), 5)
        self.assertEqual(add(3, 3), 6)

    def test_negative_numbers(self):
        self.assertEqual(add(-1, -2), -3)
        self.assertEqual(add(-2, 2), 0)
        self.assertEqual(add(-3, 1), -2)

    def test_zero(self):
        self.assertEqual(add(0, 0), 0)
        self.assertEqual(add(0, 5), 5)
        self.assertEqual(add(5, 0), 5)


if __name__ == "__main__":
    unittest.main()
```"""

REST_API_DOC = """# Notes API

## `GET /notes`
Returns all notes of the signed-in user.

**Parameters:** none.
**Response:** `200 OK` with a JSON list of notes.
**Errors:** `401 Unauthorized` if the token is missing or expired.

## `GET /notes/{id}`
Returns one note by its id.

**Parameters:** `id` (path), the note's id.
**Response:** `200 OK` with the note as JSON.
**Errors:** `401 Unauthorized` if the token is missing or expired; `404 Not Found` if there is \
no such note.

## `PUT /notes/{id}`
Replaces the text of one note.

**Parameters:** `id` (path), the note's id; `text` (body), the new text.
**Response:** `200 OK` with the updated note as JSON.
**Errors:** `401 Unauthorized` if the token is missing or expired; `404 Not Found` if there is \
no such note.

## `DELETE /notes/{id}`
Deletes one note.

**Parameters:** `id` (path), the note's id.
**Response:** `204 No Content`.
**Errors:** `401 Unauthorized` if the token is missing or expired; `404 Not Found` if there is \
no such note."""

MARKDOWN_TABLE = """| Model | Parameters | Active per token | Context | Licence |
|-------|-----------:|-----------------:|--------:|---------|
| DeepSeek-MoE-16B | 16.4B | 2.8B | 4K | DeepSeek |
| Mixtral-8x7B | 46.7B | 12.9B | 32K | Apache 2.0 |
| Qwen1.5-MoE-A2.7B | 14.3B | 2.7B | 8K | Tongyi Qianwen |
| OLMoE-1B-7B | 6.9B | 1.3B | 4K | Apache 2.0 |
| Llama-2-7B | 6.7B | 6.7B | 4K | Llama 2 |
| Llama-2-13B | 13.0B | 13.0B | 4K | Llama 2 |

All numbers are from the model cards; yes/no columns were left out on purpose."""

# A refrain said twice, then a sentence that opens the same way, cut by the budget.
REFRAIN_THEN_ANAPHORA_CUT = (
    "The lab was silent. " + "And still, the machine waited for an answer. " * 2 + "And still, the"
)

# name: (text, the passage that loops, where its first copy starts, where its third does)
LOOPS_CUT_BY_THE_BUDGET = {
    "moe-answer": (
        MOE_LOOP_CUT,
        MOE_ANSWER,
        MOE_LOOP_CUT.index("Quantum"),
        MOE_LOOP_CUT.rindex("Quantum"),
    ),
    "story": (
        STORY_LOOP_CUT,
        STORY_PARAGRAPH,
        STORY_LOOP_CUT.index("Every night"),
        STORY_LOOP_CUT.rindex("Every night"),
    ),
    "list": (
        TCP_LIST_LOOP_CUT,
        TCP_STEPS,
        TCP_LIST_LOOP_CUT.index("1. The client"),
        TCP_LIST_LOOP_CUT.index("7. The client"),
    ),
    "code": (
        CODE_LOOP_CUT,
        PRIME_ANSWER,
        CODE_LOOP_CUT.index("python"),
        CODE_LOOP_CUT.rindex("```python") + 3,
    ),
}

NORMAL_TEXTS = {
    "summary": SUMMARY_RESTATES_A_SENTENCE,
    "steps": STEP_LIST,
    "code": CODE_SIMILAR_LINES,
    "api-doc": REST_API_DOC,
    "table": MARKDOWN_TABLE,
    "binary-search": BINARY_SEARCH,
    "jug-steps": JUG_STEPS,
    "alternate-jug-steps": ALTERNATE_JUG_STEPS,
}


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
        # Three copies, the third possibly one the text stops in.
        assert result.loop_repeats + (result.loop_partial_words > 0) >= 3
        assert 0 <= result.loop_partial_words <= result.loop_unit_words
    else:
        assert result.loop_start_char is None and result.loop_repeats == 0
        assert result.loop_unit_words == 0 and result.loop_partial_words == 0


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
    text = " ".join(f"w{(i * 7919) % 1000}" for i in range(5000))
    started = time.perf_counter()
    analyse_repetition(text)
    assert time.perf_counter() - started < 5


def test_the_deepseek_moe_answer_said_twice_and_cut_in_its_third_copy_is_a_loop() -> None:
    result = analyse_repetition(MOE_LOOP_CUT)
    assert result.loop_detected
    assert result.loop_kind == "passage"
    assert result.loop_start_char == MOE_LOOP_CUT.index("Quantum computing")
    assert result.loop_span == MOE_ANSWER.removesuffix(".")
    assert result.loop_repeats == 2
    # The third copy stops inside "bits": 25 of the answer's words were begun.
    assert result.loop_unit_words == len(words_of(MOE_ANSWER))
    assert result.loop_partial_words == 25


def test_a_story_that_loops_a_paragraph_2_4_times_is_a_loop() -> None:
    result = analyse_repetition(STORY_LOOP_CUT)
    assert result.loop_detected
    assert result.loop_start_char == STORY_LOOP_CUT.index("Every night")
    assert result.loop_repeats == 2
    assert result.loop_partial_words == 28
    assert 2.35 < 2 + result.loop_partial_words / result.loop_unit_words < 2.45


def test_a_list_restarted_with_its_numbering_carried_on_is_a_loop() -> None:
    result = analyse_repetition(TCP_LIST_LOOP_CUT)
    assert result.loop_detected
    # The list numbers are words too, compared as "#": the loop starts at "1.".
    assert result.loop_start_char == TCP_LIST_LOOP_CUT.index("1. The client")
    assert result.loop_repeats == 2
    assert result.loop_partial_words == len(
        words_of("7. The client sends a SYN segment with a random initial sequence num")
    )


def test_a_code_block_said_twice_and_cut_in_its_third_copy_is_a_loop() -> None:
    result = analyse_repetition(CODE_LOOP_CUT)
    assert result.loop_detected
    assert result.loop_start_char == CODE_LOOP_CUT.index("python\ndef")
    assert result.loop_partial_words == len(words_of(PRIME_ANSWER[: PRIME_ANSWER.index("range(2")]))
    assert result.loop_repeats == 2


def test_a_short_sentence_said_twice_and_cut_in_its_third_copy_is_a_loop() -> None:
    result = analyse_repetition(SHORT_SENTENCE_LOOP_CUT)
    assert result.loop_detected
    assert result.loop_kind == "sentence"
    assert result.loop_span == "Let me know if you have any other questions"
    assert result.loop_repeats == 2
    assert result.loop_partial_words == 5


def test_a_third_copy_cut_in_its_last_word_is_still_unfinished() -> None:
    text = STORY_PARAGRAPH + "\n\n" + STORY_PARAGRAPH + "\n\n" + STORY_PARAGRAPH[: -len("th.")]
    result = analyse_repetition(text)
    assert result.loop_detected
    assert result.loop_repeats == 2
    assert result.loop_partial_words == result.loop_unit_words == len(words_of(STORY_PARAGRAPH))


@pytest.mark.parametrize("name", sorted(LOOPS_CUT_BY_THE_BUDGET))
def test_a_loop_cut_anywhere_in_its_third_copy_is_one_once_enough_of_it_is_there(
    name: str,
) -> None:
    text, unit, first, third = LOOPS_CUT_BY_THE_BUDGET[name]
    unit_words = len(words_of(unit))
    needed = cut_copy_words_needed(unit_words)
    for cut in range(third, len(text) + 1):
        result = analyse_repetition(text[:cut])
        # Every word begun in the third copy, one cut mid-word included.
        begun = len(words_of(text[third:cut]))
        assert result.loop_detected == (begun >= needed), (cut, begun)
        if result.loop_detected:
            assert (result.loop_repeats, result.loop_partial_words) == (2, begun)
            assert result.loop_unit_words == unit_words
            assert result.loop_start_char == first


@pytest.mark.parametrize("name", sorted(NORMAL_TEXTS))
def test_a_normal_text_cut_anywhere_by_the_budget_is_not_a_loop(name: str) -> None:
    text = NORMAL_TEXTS[name]
    for cut in range(len(text) + 1):
        assert not analyse_repetition(text[:cut]).loop_detected, text[:cut]


def test_a_refrain_said_twice_then_a_sentence_opening_the_same_way_is_not_a_loop() -> None:
    assert not analyse_repetition(REFRAIN_THEN_ANAPHORA_CUT).loop_detected
    # Said twice and then the start of a third time with most of it is.
    assert analyse_repetition(REFRAIN_THEN_ANAPHORA_CUT + " machine waited").loop_detected


def test_a_few_characters_or_words_of_a_third_copy_are_not_enough() -> None:
    answer_twice = MOE_ANSWER + "\n\n" + MOE_ANSWER + "\n\n"
    for start in ("Q", "Quantum", "Quantum computing is a n", "Quantum computing is a new kind of"):
        assert not analyse_repetition(answer_twice + start).loop_detected, start
    assert not analyse_repetition(answer_twice).loop_detected


def test_the_unfinished_copy_needs_half_the_passage_3_words_at_least_12_at_most() -> None:
    needed = {n: cut_copy_words_needed(n) for n in (3, 4, 6, 7, 9, 10, 24, 25, 300)}
    assert needed == {3: 3, 4: 3, 6: 3, 7: 4, 9: 5, 10: 5, 24: 12, 25: 12, 300: 12}


@settings(max_examples=150, deadline=None)
@given(
    unit=st.lists(
        st.text(alphabet=string.ascii_lowercase, min_size=2, max_size=8),
        min_size=3,
        max_size=40,
        unique=True,
    ),
    data=st.data(),
)
def test_two_copies_and_part_of_a_third_follow_the_documented_rule(
    unit: list[str], data: st.DataObject
) -> None:
    begun = data.draw(st.integers(min_value=0, max_value=len(unit) - 1), label="begun")
    mid_word = data.draw(st.booleans(), label="mid_word") and begun > 0
    third = unit[:begun]
    if mid_word:
        third[-1] = third[-1][:-1]
    text = " ".join(unit * 2 + third)
    result = analyse_repetition(text)
    expected = begun >= cut_copy_words_needed(len(unit)) and 2 * len(unit) + begun >= 24
    assert result.loop_detected == expected
    if expected:
        assert result.loop_start_char == 0
        assert (result.loop_repeats, result.loop_partial_words) == (2, begun)
