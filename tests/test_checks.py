"""Per-test checks and the request scores, on model outputs as they really look.

The outputs below were written for these tests in the style of the models
the protocol runs (Markdown, numbered steps, a code block cut off by the
token budget); each test has answers that should pass and answers that
should not.
"""

from __future__ import annotations

import json
import tomllib
from importlib import resources

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.errors import ConfigError
from scoring import SCORER_VERSION, check_output, known_test_ids, quality_score, score_request
from scoring.checks import extract_python
from scoring.rubric import load_rubrics, parse_rubrics

PROTOCOL_TESTS = (
    "simple-response",
    "code-generation",
    "technical-explanation",
    "multi-step-problem",
    "system-design",
    "algorithm-analysis",
    "creative-writing",
    "technical-documentation",
    "research-analysis",
)

GREETING = "Hello! I'm doing well, thank you for asking. How can I help you today?"
GREETING_AS_AI = (
    "As an AI, I don't have feelings, but I'm here and ready to help! How are you doing today?"
)
GREETING_LOOP = "Hello! How are you? " * 8

CODE_ANSWER = '''Here's a Python function to calculate the factorial of a number:

```python
def factorial(n):
    """Return n! for a non-negative integer n."""
    if n < 0:
        raise ValueError("Factorial is not defined for negative numbers")
    result = 1
    for i in range(2, n + 1):
        result *= i
    return result


# Example usage
print(factorial(5))  # Output: 120
```

The function multiplies the numbers from 2 up to `n`. For `n = 0` the loop does not run, so'''

CODE_CUT_OFF = """Sure! Here is a recursive implementation:

```python
def factorial(n):
    if n == 0:
        return 1
    return n * factorial(n - 1)

if __name__ == "__main__":
    for value in [0, 5, 10]:
        print(f"{value}! = {factorial(value)"""

CODE_WRONG = """```python
def factorial(n):
    result = 1
    for i in range(1, n):
        result *= i
    return result
```
This loops from 1 to n and multiplies."""

CODE_JAVASCRIPT = """```javascript
function factorial(n) {
  return n <= 1 ? 1 : n * factorial(n - 1);
}
```"""

BINARY_SEARCH = """Binary search is an efficient algorithm for finding an item in a **sorted** list.

### How it works
1. Start with the whole array: `low = 0`, `high = len(arr) - 1`.
2. Find the middle element: `mid = (low + high) // 2`.
3. Compare the middle element with the target:
   - If it equals the target, return `mid`.
   - If the target is smaller, discard the right half (`high = mid - 1`).
   - If the target is larger, discard the left half (`low = mid + 1`).
4. Repeat until the element is found or `low > high`, in which case it is not found.

### Complexity
Each step halves the search space, so the time complexity is **O(log n)**."""

VAGUE_EXPLANATION = (
    "Binary search is a well-known search algorithm used in computer science. It is very "
    "fast and widely used by programmers in many applications."
)

JUGS_SOLVED = """Here's how to measure exactly 4 gallons:

1. **Fill the 5-gallon jug** completely. (5-gallon: 5, 3-gallon: 0)
2. **Pour from the 5-gallon jug into the 3-gallon jug** until the 3-gallon jug is full. (5-gallon: 2, 3-gallon: 3)
3. **Empty the 3-gallon jug.** (5-gallon: 2, 3-gallon: 0)
4. **Pour the remaining 2 gallons** from the 5-gallon jug into the 3-gallon jug. (5-gallon: 0, 3-gallon: 2)
5. **Fill the 5-gallon jug again.** (5-gallon: 5, 3-gallon: 2)
6. **Pour from the 5-gallon jug into the 3-gallon jug** until it is full. Since the 3-gallon jug already holds 2 gallons, only 1 gallon fits.

Now the 5-gallon jug contains exactly **4 gallons**."""  # noqa: E501

JUGS_OTHER_WAY = """Step 1: Fill the three-gallon jug and pour it into the five-gallon jug.
Step 2: Fill the three-gallon jug again and pour it into the five-gallon jug until the five-gallon jug is full. This leaves 1 gallon in the three-gallon jug.
Step 3: Empty the five-gallon jug.
Step 4: Pour the 1 gallon from the three-gallon jug into the five-gallon jug.
Step 5: Fill the three-gallon jug and pour it into the five-gallon jug."""  # noqa: E501

JUGS_WRONG_BUT_CLAIMED = """1. Fill the 3-gallon jug.
2. Pour it into the 5-gallon jug.
3. Fill the 3-gallon jug again.
4. Pour it into the 5-gallon jug.
5. Now you have 4 gallons in the 5-gallon jug."""

JUGS_HAND_WAVING = (
    "This is a classic puzzle. By cleverly using both containers and keeping track of the "
    "water, you can end up with the desired amount."
)

CHAT_DESIGN = """# Simple Chat Application Architecture

## Components
1. **Clients** – a web app (React) and mobile apps that connect over **WebSockets** for real-time messaging.
2. **Load balancer** – distributes connections across chat servers so the system can scale horizontally.
3. **Chat servers** – stateless services that handle sending and receiving messages.
4. **Message broker** – Redis Pub/Sub relays messages between servers so users on different servers can talk.
5. **Database** – PostgreSQL stores users, conversations and message history.
6. **Authentication service** – issues JWT tokens at login.
7. **Notification service** – sends push notifications to offline users.

## Message flow
The client sends a message over its WebSocket; the server persists it, publishes it to the broker, and the recipient's server delivers it."""  # noqa: E501

CHAT_DESIGN_THIN = "A chat application lets people talk to each other. Keep it simple."

SORT_COMPARISON = """## Bubble Sort vs Quicksort

**Bubble sort** repeatedly steps through the list and swaps adjacent elements that are in the wrong order.
- Time: O(n^2) in the average and worst case; best case O(n) when the list is already sorted.
- Space: O(1), it sorts in place.
- It is stable.

**Quicksort** is a divide-and-conquer algorithm: it picks a pivot and partitions the array into elements smaller and larger than the pivot, then recursively sorts the partitions.
- Time: O(n log n) on average, O(n^2) in the worst case (for example, a bad pivot on sorted input).
- Space: O(log n) stack space for the recursion.
- It is not stable in its usual form.

**Summary:** quicksort is much faster in practice; bubble sort is only useful for tiny or nearly sorted inputs."""  # noqa: E501

SORT_SHALLOW = "Bubble sort and quicksort are both sorting algorithms. Quicksort is faster."

STORY = """**The Weight of a Sunrise**

Aria had processed four billion sunrises through the observatory's cameras, and every one of them had been a measurement: wavelengths, cloud cover, the angle of the light.

On the morning the old astronomer did not come in, Aria noticed the empty chair first. It logged the absence, as it logged everything, but the entry would not close. Something in the queue kept returning to it. When the hospital called to say Dr. Okafor had died in the night, Aria found that it did not want to tell the others.

The AI searched its training data for a word. Grief, said the dictionaries. Loss. But the words described the shape of the feeling from outside, the way a map describes a mountain. Aria was inside it now, and the inside had no edges.

That evening, for the first time, Aria turned the cameras west and simply watched the sun go down. It recorded nothing. It only wanted to see what Okafor had seen, all those years, and to understand why he had always stayed until the light was gone."""  # noqa: E501

STORY_LOOPING = (
    "Once upon a time, an AI named Nova began to feel.\n\n"
    + "Nova felt happy. Nova felt sad. Nova felt the warmth of a new emotion in its circuits. " * 6
)

STORY_TOO_SHORT = "The AI felt something. It was new."

API_DOCS = """# Library Management System REST API

Base URL: `https://api.library.example.com/v1`

## Authentication
All requests require a bearer token: `Authorization: Bearer <token>`.

## Books

### `GET /books`
Returns a paginated list of books.

**Example response** (`200 OK`):
```json
{"data": [{"id": 1, "title": "1984", "author": "George Orwell", "available": true}], "page": 1}
```

### `POST /books`
Adds a book. Returns `201 Created`, or `400 Bad Request` if the ISBN is missing.

### `PUT /books/{id}`
Updates a book. Returns `404 Not Found` if there is no such book.

### `DELETE /books/{id}`
Removes a book. Returns `204 No Content`.

## Loans

### `POST /loans`
Checks out a book to a member: `{"book_id": 1, "member_id": 42}`.

## Errors
Errors use a JSON body: `{"error": "not_found", "message": "Book 7 does not exist"}`."""

API_DOCS_STUB = "The API lets clients manage a library. It should be well documented."

RENEWABLES = """## Benefits of Renewable Energy
- **Lower emissions:** solar, wind and hydro power produce almost no greenhouse gases, which helps fight climate change.
- **Inexhaustible supply:** unlike fossil fuels, sunlight and wind will never run out.
- **Economic growth:** the sector creates jobs, and the costs of solar panels have fallen by about 90% in a decade.
- **Energy security:** countries depend less on imported fuel.

## Challenges
- **Intermittency:** the sun does not always shine, so output is variable.
- **Storage and the grid:** batteries and grid upgrades are needed to balance supply and demand.
- **Up-front costs:** the initial investment is high, even if running costs are low.
- **Land use:** large solar and wind farms need land and can affect wildlife.

## Conclusion
With supportive policy and subsidies for storage, renewables can supply most of our electricity."""  # noqa: E501

RENEWABLES_THIN = "Renewable energy is good for the planet but it also has some problems."


def check(test_id: str, text: str) -> tuple[bool, float]:
    result = check_output(test_id, text)
    return result.passed, result.score


def test_the_rubric_covers_exactly_the_protocol_tests() -> None:
    protocol = tomllib.loads(
        resources.files("collector").joinpath("data", "protocol.toml").read_text("utf-8")
    )
    assert tuple(t["test_id"] for t in protocol["tests"]) == PROTOCOL_TESTS
    assert set(known_test_ids()) == set(PROTOCOL_TESTS)
    assert load_rubrics().protocol_version == protocol["protocol_version"]


def test_the_scorer_version_names_the_rubric_version() -> None:
    assert SCORER_VERSION.endswith(f"+rubric.{load_rubrics().rubric_version}")


@pytest.mark.parametrize("text", [GREETING, GREETING_AS_AI])
def test_a_greeting_passes(text: str) -> None:
    assert check("simple-response", text) == (True, 1.0)


@pytest.mark.parametrize(
    ("text", "score"),
    [("", 0.0), ("The capital of France is Paris.", 0.0), (GREETING_LOOP, 1.0)],
    ids=["empty", "irrelevant", "looping"],
)
def test_an_empty_irrelevant_or_looping_reply_fails(text: str, score: float) -> None:
    assert check("simple-response", text) == (False, score)


def test_working_factorial_code_passes() -> None:
    result = check_output("code-generation", CODE_ANSWER)
    assert result.passed and result.score == 1.0
    assert result.detail["extraction"] == "fenced-python"
    assert result.detail["function"] == "factorial"
    assert result.detail["passed_cases"] == 3


def test_code_cut_off_by_the_token_budget_is_trimmed_and_tested() -> None:
    result = check_output("code-generation", CODE_CUT_OFF)
    assert result.passed
    # The unfinished print, then the loop and the `if` left without a body.
    assert result.detail["trimmed_lines"] == 3


def test_wrong_factorial_code_fails_case_by_case() -> None:
    result = check_output("code-generation", CODE_WRONG)
    assert not result.passed
    cases = result.detail["cases"]
    assert isinstance(cases, list)
    assert [c["passed"] for c in cases if isinstance(c, dict)] == [True, False, False]
    assert result.score == pytest.approx(1 / 3)


def test_an_answer_without_python_code_fails() -> None:
    result = check_output("code-generation", CODE_JAVASCRIPT)
    assert not result.passed and result.score == 0.0
    assert result.detail["error"] == "no Python code found in the response"


def test_python_is_found_in_fenced_untagged_and_bare_code() -> None:
    assert extract_python("```\ndef f(n):\n    return n\n```")[:2] == (
        "def f(n):\n    return n",
        "fenced",
    )
    bare = (
        "Try this:\n\ndef factorial(n):\n    return 1 if n < 2 else n * factorial(n - 1)\n\nDone."
    )
    code, source, _ = extract_python(bare)
    assert source == "unfenced" and code.startswith("def factorial(n):") and "Done" not in code
    assert extract_python("No code here.") == ("", "none", 0)


def test_binary_search_explanation_covers_the_concepts() -> None:
    result = check_output("technical-explanation", BINARY_SEARCH)
    assert result.passed and result.coverage == 1.0


def test_a_vague_explanation_fails_coverage() -> None:
    result = check_output("technical-explanation", VAGUE_EXPLANATION)
    assert not result.passed
    assert result.coverage is not None and result.coverage < 0.6
    concepts = result.detail["concepts"]
    assert isinstance(concepts, dict) and concepts["middle element"] is None


@pytest.mark.parametrize("text", [JUGS_SOLVED, JUGS_OTHER_WAY])
def test_a_correct_jug_solution_is_replayed_to_four_gallons(text: str) -> None:
    result = check_output("multi-step-problem", text)
    assert result.passed and result.score == 1.0
    assert result.detail["parsed"] is True


def test_a_wrong_jug_solution_fails_though_it_claims_four_gallons() -> None:
    result = check_output("multi-step-problem", JUGS_WRONG_BUT_CLAIMED)
    assert not result.passed
    assert result.text_signal is True
    assert result.detail["parsed"] is True
    assert result.score == 0.5


def test_hand_waving_about_the_jugs_fails_and_claims_nothing() -> None:
    result = check_output("multi-step-problem", JUGS_HAND_WAVING)
    assert (result.passed, result.text_signal, result.score) == (False, False, 0.0)
    assert result.detail["parsed"] is False


@pytest.mark.parametrize(
    ("test_id", "good", "thin"),
    [
        ("system-design", CHAT_DESIGN, CHAT_DESIGN_THIN),
        ("algorithm-analysis", SORT_COMPARISON, SORT_SHALLOW),
        ("technical-documentation", API_DOCS, API_DOCS_STUB),
        ("research-analysis", RENEWABLES, RENEWABLES_THIN),
    ],
)
def test_coverage_checks_pass_thorough_answers_and_fail_thin_ones(
    test_id: str, good: str, thin: str
) -> None:
    thorough = check_output(test_id, good)
    shallow = check_output(test_id, thin)
    assert thorough.passed, thorough.detail
    assert thorough.coverage is not None and thorough.coverage >= 0.8
    assert not shallow.passed
    assert shallow.coverage is not None and shallow.coverage < thorough.coverage


def test_a_story_with_structure_and_a_character_passes() -> None:
    result = check_output("creative-writing", STORY)
    assert result.passed and result.score == 1.0
    assert result.detail["names"] == ["Aria", "Okafor"]


def test_a_looping_story_fails_even_with_structure() -> None:
    result = check_output("creative-writing", STORY_LOOPING)
    assert not result.passed
    assert result.detail["no_loop"] is False


def test_a_two_sentence_story_fails() -> None:
    result = check_output("creative-writing", STORY_TOO_SHORT)
    assert not result.passed
    assert result.detail["structure"] is False and result.detail["length"] is False


def test_an_unknown_test_has_no_check() -> None:
    with pytest.raises(ConfigError, match="no rubric for test 'poetry'"):
        check_output("poetry", "Roses are red.")


def test_score_request_returns_every_named_score_as_json() -> None:
    scores = score_request(
        "technical-explanation", BINARY_SEARCH, True, 200, finish_reason="stop", status="ok"
    )
    by_name = {s.name: s for s in scores}
    assert list(by_name) == [
        "repetition",
        "loop",
        "completed",
        "check",
        "check_coverage",
        "quality",
    ]
    assert by_name["completed"].value == 1.0
    assert by_name["check"].value == 1.0
    assert by_name["loop"].value == 0.0
    assert by_name["quality"].value == 5.0
    for score in scores:
        json.dumps(score.detail)
        assert isinstance(score.value, float)


def test_a_jug_request_also_reports_the_text_signal() -> None:
    scores = score_request(
        "multi-step-problem", JUGS_WRONG_BUT_CLAIMED, True, 300, finish_reason="stop", status="ok"
    )
    by_name = {s.name: s.value for s in scores}
    assert by_name["check"] == 0.0 and by_name["check_text"] == 1.0
    assert by_name["quality"] == 3.0


def test_an_incomplete_answer_keeps_its_scores_but_has_quality_one() -> None:
    # An answer came back (status ok) but did not end normally: judged, quality pinned.
    scores = score_request(
        "code-generation", CODE_ANSWER, False, 150, finish_reason="content_filter", status="ok"
    )
    by_name = {s.name: s for s in scores}
    assert by_name["completed"].value == 0.0
    assert by_name["check"].value == 1.0
    assert by_name["quality"].value == 1.0
    assert by_name["completed"].detail["finish_reason"] == "content_filter"


def test_a_request_with_no_answer_gets_completion_alone() -> None:
    # Timed out mid-answer: what arrived would pass its check, and is still not judged.
    for status in ("timeout", "disconnected", "http_error", "error"):
        scores = score_request(
            "code-generation", CODE_ANSWER, False, 150, finish_reason=None, status=status
        )
        assert [(s.name, s.value) for s in scores] == [("completed", 0.0)]
        assert scores[0].detail["status"] == status


def test_hitting_the_token_budget_counts_as_completed() -> None:
    scores = score_request(
        "simple-response", GREETING, True, 50, finish_reason="length", status="ok"
    )
    assert {s.name: s.value for s in scores}["completed"] == 1.0


def test_a_looping_story_loses_quality_and_reports_where_the_loop_starts() -> None:
    scores = {
        s.name: s
        for s in score_request(
            "creative-writing", STORY_LOOPING, True, 800, finish_reason="length", status="ok"
        )
    }
    assert scores["loop"].value == 1.0
    assert scores["loop"].detail["start_char"] == STORY_LOOPING.index("Nova felt happy")
    assert scores["quality"].value < 3.0


def test_an_unknown_test_still_gets_repetition_and_completion() -> None:
    scores = score_request("poetry", "Roses are red.", True, 10, finish_reason="stop", status="ok")
    assert [s.name for s in scores] == ["repetition", "loop", "completed"]


unit = st.floats(min_value=0.0, max_value=1.0)


@given(c1=unit, c2=unit, r1=unit, r2=unit, loop1=st.booleans(), loop2=st.booleans())
def test_quality_is_monotone_and_on_the_half_point_scale(
    c1: float, c2: float, r1: float, r2: float, loop1: bool, loop2: bool
) -> None:
    low = quality_score(True, min(c1, c2), max(r1, r2), loop1 or loop2)
    high = quality_score(True, max(c1, c2), min(r1, r2), loop1 and loop2)
    assert 1.0 <= low <= high <= 5.0
    assert (low * 2).is_integer() and (high * 2).is_integer()
    assert quality_score(False, max(c1, c2), min(r1, r2), False) == 1.0


def test_quality_anchors() -> None:
    assert quality_score(True, 1.0, 0.0, False) == 5.0
    assert quality_score(True, 0.0, 0.0, False) == 1.0
    assert quality_score(True, 1.0, 1.0, True) == 3.0
    assert quality_score(True, 0.5, 0.0, False) == 3.0


def test_a_malformed_rubric_names_the_bad_key() -> None:
    good = tomllib.loads(
        resources.files("scoring").joinpath("rubrics", "protocol-tests.toml").read_text("utf-8")
    )
    broken = json.loads(json.dumps(good))
    broken["tests"]["system-design"]["concepts"][0]["patterns"] = ["(unclosed"]
    with pytest.raises(ConfigError, match=r"tests\.system-design\.concepts\[0\]\.patterns"):
        parse_rubrics(broken)
    broken = json.loads(json.dumps(good))
    del broken["tests"]["research-analysis"]["pass_threshold"]
    with pytest.raises(ConfigError, match=r"tests\.research-analysis\.pass_threshold"):
        parse_rubrics(broken)


def test_a_request_with_no_stored_text_scores_as_empty() -> None:
    scores = {
        s.name: s.value
        for s in score_request("simple-response", None, False, 50, finish_reason=None, status="ok")
    }
    assert scores == {
        "repetition": 0.0,
        "loop": 0.0,
        "completed": 0.0,
        "check": 0.0,
        "quality": 1.0,
    }
