"""Per-test automated checks: does the response do what its prompt asked?

Each protocol test has one kind of check, configured in the rubric
(`scoring/rubrics/protocol-tests.toml`):

- **python-function** (code-generation): the Python code is taken from the
  response (```python fenced blocks first, then other fenced blocks that look
  like Python, then unfenced `def`/`import` blocks); a block cut off by the
  token budget is shortened line by line until it parses. The code runs in
  the sandbox (`scoring.sandbox`) and its factorial function is called on
  0, 5 and 10. Passes when every case returns the expected integer; its
  graded score is the share of cases passed.
- **water-jugs** (multi-step-problem): the answer's steps are replayed
  (`scoring.jugs`). Passes when the replay reaches exactly 4 gallons. Graded
  score: 1 when the replay reaches it, 0.5 when only the text claims it (the
  replay may not have understood the wording), else 0.
- **coverage** (the explanation, design, comparison, documentation and
  analysis tests): the share of the rubric's concepts the response mentions,
  each concept recognised by any of its patterns. Passes at the rubric's
  threshold; the graded score is the share itself.
- **narrative** (creative-writing): structure (enough paragraphs or
  sentences), length (enough words) and a character (a proper name used at
  least twice mid-sentence, or one of the rubric's patterns such as "the
  AI"). Passes when all three hold and no loop was detected; the graded score
  is the share of the three that hold.
- **greeting** (simple-response): a non-empty reply that greets or answers
  "how are you?". Passes when it does and no loop was detected; graded score
  1 or 0.
"""

from __future__ import annotations

import ast
import re
import textwrap
from dataclasses import dataclass

from common.errors import ConfigError
from scoring.jugs import simulate_jugs
from scoring.repetition import RepetitionResult, analyse_repetition, words_of
from scoring.rubric import (
    CoverageRubric,
    FunctionRubric,
    GreetingRubric,
    JugRubric,
    NarrativeRubric,
    load_rubrics,
)
from scoring.sandbox import SandboxLimits, run_function_cases
from scoring.score import JSONObject, JSONValue, clip_text

# A fenced block; an unclosed fence (the budget ran out) runs to the end.
_FENCE = re.compile(
    r"^[ \t]*(?P<fence>`{3,}|~{3,})[ \t]*(?P<lang>[\w+.-]*)[^\n]*\n"
    r"(?P<body>.*?)(?:^[ \t]*(?P=fence)[ \t]*$|\Z)",
    re.MULTILINE | re.DOTALL,
)
_PYTHON_TAGS = frozenset({"python", "py", "python3", "py3"})
_LOOKS_LIKE_PYTHON = re.compile(
    r"^\s*(?:def |class |import |from \S+ import |return\b)", re.MULTILINE
)
_CODE_START = re.compile(r"^(?:def |async def |class |import |from [\w.]+ import |@\w)")
_PARAGRAPH_SPLIT = re.compile(r"\n\s*\n")
_SENTENCE_END = re.compile(r"[.!?]+(?=[\s\"'”’)]|$)")
_PROPER_NAME = re.compile(r"\b(?:[A-Z][a-z]{2,}|[A-Z]{3,8})\b")
_SENTENCE_OPENING = re.compile(r"(?:^|[.!?:;]\s*[\"'“‘(]?|\n\s*[\"'“‘(#*>-]*\s*|[\"“]\s*)$")
_HONORIFIC = re.compile(r"\b(?:Dr|Mr|Mrs|Ms|Mx|Prof|St)\.\s*$")
# Capitalised words that are not character names even mid-sentence.
_NOT_NAMES = frozenset(
    {
        "AI", "The", "And", "But", "For", "She", "Her", "His", "They", "Their", "Then", "When",
        "What", "Why", "How", "Who", "Yes", "One", "Chapter", "Title", "Part", "End", "THE",
        "AND", "CPU", "GPU", "API", "RAM", "Monday", "Tuesday", "Wednesday", "Thursday",
        "Friday", "Saturday", "Sunday", "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December", "English", "Earth",
    }
)  # fmt: skip


@dataclass(frozen=True)
class CheckResult:
    """The outcome of a test's check.

    `passed` is the verdict; `score` is the graded share in [0, 1] that the
    quality formula uses; `coverage` is set for coverage and narrative checks;
    `text_signal` for the water-jug check (the answer claims the target).
    """

    test_id: str
    kind: str
    passed: bool
    score: float
    coverage: float | None
    text_signal: bool | None
    detail: JSONObject


def known_test_ids() -> tuple[str, ...]:
    """The test ids the rubric has a check for."""
    return tuple(load_rubrics().tests)


def check_output(
    test_id: str,
    output_text: str,
    *,
    repetition: RepetitionResult | None = None,
    sandbox_limits: SandboxLimits | None = None,
) -> CheckResult:
    """Run the rubric's check for `test_id` on a response.

    `repetition` (computed if not given) supplies the loop verdict that the
    narrative and greeting checks require. Raises `ConfigError` for a test id
    the rubric does not know, and `SandboxError` if code cannot be run at all.
    """
    rubrics = load_rubrics()
    rubric = rubrics.tests.get(test_id)
    if rubric is None:
        raise ConfigError(
            f"no rubric for test {test_id!r}; known tests: {', '.join(rubrics.tests)}. "
            f"Add it to scoring/rubrics/ and bump rubric_version"
        )
    repetition = repetition or analyse_repetition(output_text)
    if isinstance(rubric, FunctionRubric):
        result = _check_function(test_id, output_text, rubric, sandbox_limits)
    elif isinstance(rubric, JugRubric):
        result = _check_jugs(test_id, output_text, rubric)
    elif isinstance(rubric, CoverageRubric):
        result = _check_coverage(test_id, output_text, rubric)
    elif isinstance(rubric, NarrativeRubric):
        result = _check_narrative(test_id, output_text, rubric, repetition)
    else:
        result = _check_greeting(test_id, output_text, rubric, repetition)
    result.detail["rubric_version"] = rubrics.rubric_version
    return result


def extract_python(text: str) -> tuple[str, str, int]:
    """The Python code in a response: (code, where it came from, lines trimmed).

    Where: "fenced-python", "fenced", "unfenced" or "none". Blocks that do not
    parse are shortened from the end until they do (a response cut off by its
    token budget usually ends mid-statement); blocks that never parse are
    dropped unless none parses, in which case the first is kept as it is so
    the sandbox reports its syntax error.
    """
    blocks = [(m.group("lang").lower(), m.group("body")) for m in _FENCE.finditer(text)]
    python = [body for lang, body in blocks if lang in _PYTHON_TAGS]
    untagged = [body for lang, body in blocks if not lang and _LOOKS_LIKE_PYTHON.search(body)]
    if python:
        chosen, source = python, "fenced-python"
    elif untagged:
        chosen, source = untagged, "fenced"
    else:
        chosen, source = _unfenced_blocks(text), "unfenced"
    if not chosen:
        return "", "none", 0
    parsed = [_parseable(textwrap.dedent(block)) for block in chosen]
    kept = [(code, trimmed) for code, trimmed in parsed if code is not None]
    if not kept:
        return textwrap.dedent(chosen[0]).strip("\n"), source, 0
    return "\n\n".join(code for code, _ in kept), source, sum(trimmed for _, trimmed in kept)


def _unfenced_blocks(text: str) -> list[str]:
    """Top-level `def`/`class`/`import` lines with the indented lines below them."""
    blocks: list[list[str]] = []
    current: list[str] | None = None
    for line in text.splitlines():
        if _CODE_START.match(line):
            if current is None:
                current = []
                blocks.append(current)
            current.append(line)
        elif current is not None and (not line.strip() or line[:1] in (" ", "\t")):
            current.append(line)
        else:
            current = None
    return ["\n".join(block).strip("\n") for block in blocks]


def _parseable(code: str) -> tuple[str | None, int]:
    lines = code.rstrip().splitlines()
    for trimmed in range(len(lines)):
        candidate = "\n".join(lines[: len(lines) - trimmed])
        if not candidate.strip():
            break
        try:
            ast.parse(candidate)
        except (SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        return candidate, trimmed
    return None, 0


def _check_function(
    test_id: str, text: str, rubric: FunctionRubric, limits: SandboxLimits | None
) -> CheckResult:
    code, source, trimmed = extract_python(text)
    detail: JSONObject = {
        "kind": rubric.kind,
        "extraction": source,
        "code_chars": len(code),
        "trimmed_lines": trimmed,
    }
    if not code:
        detail["error"] = "no Python code found in the response"
        return CheckResult(test_id, rubric.kind, False, 0.0, None, None, detail)
    result = run_function_cases(
        code, rubric.cases, function_hint=rubric.function_hint, limits=limits
    )
    detail |= result.as_detail()
    detail["stdout_tail"] = clip_text(result.stdout_tail, 500)
    detail["stderr_tail"] = clip_text(result.stderr_tail, 500)
    detail["error"] = result.load_error or next(
        (case.error for case in result.cases if case.error), None
    )
    score = result.passed_cases / len(rubric.cases)
    return CheckResult(test_id, rubric.kind, result.all_passed, score, None, None, detail)


def _check_jugs(test_id: str, text: str, rubric: JugRubric) -> CheckResult:
    simulation = simulate_jugs(text, rubric.jugs, rubric.target)
    if simulation.reached_target:
        score = 1.0
    elif simulation.text_claims_target:
        score = 0.5
    else:
        score = 0.0
    detail: JSONObject = {"kind": rubric.kind, **simulation.as_detail()}
    return CheckResult(
        test_id,
        rubric.kind,
        simulation.reached_target,
        score,
        None,
        simulation.text_claims_target,
        detail,
    )


def _check_coverage(test_id: str, text: str, rubric: CoverageRubric) -> CheckResult:
    matched: dict[str, JSONValue] = {}
    for concept in rubric.concepts:
        hit = next((m for p in concept.patterns if (m := p.search(text))), None)
        matched[concept.name] = None if hit is None else clip_text(hit.group(), 60)
    covered = sum(value is not None for value in matched.values())
    coverage = covered / len(rubric.concepts)
    passed = coverage >= rubric.pass_threshold
    detail: JSONObject = {
        "kind": rubric.kind,
        "coverage": coverage,
        "covered": covered,
        "concepts_total": len(rubric.concepts),
        "pass_threshold": rubric.pass_threshold,
        "concepts": matched,
    }
    return CheckResult(test_id, rubric.kind, passed, coverage, coverage, None, detail)


def _check_narrative(
    test_id: str, text: str, rubric: NarrativeRubric, repetition: RepetitionResult
) -> CheckResult:
    words = len(words_of(text))
    paragraphs = sum(
        len(words_of(block)) >= rubric.paragraph_min_words for block in _PARAGRAPH_SPLIT.split(text)
    )
    sentences = len(_SENTENCE_END.findall(text))
    names = _recurring_names(text)
    pattern_hit = next(
        (m.group() for p in rubric.character_patterns if (m := p.search(text))), None
    )
    parts = {
        "structure": paragraphs >= rubric.min_paragraphs or sentences >= rubric.min_sentences,
        "length": words >= rubric.min_words,
        "character": bool(names) or pattern_hit is not None,
    }
    share = sum(parts.values()) / len(parts)
    passed = all(parts.values()) and not repetition.loop_detected
    detail: JSONObject = {
        "kind": rubric.kind,
        **parts,
        "no_loop": not repetition.loop_detected,
        "words": words,
        "paragraphs": paragraphs,
        "sentences": sentences,
        "names": list(names[:5]),
        "character_match": pattern_hit,
        "thresholds": {
            "min_words": rubric.min_words,
            "min_paragraphs": rubric.min_paragraphs,
            "min_sentences": rubric.min_sentences,
        },
    }
    return CheckResult(test_id, rubric.kind, passed, share, share, None, detail)


def _recurring_names(text: str) -> list[str]:
    """Capitalised words used at least twice where a sentence does not begin."""
    counts: dict[str, int] = {}
    for m in _PROPER_NAME.finditer(text):
        name = m.group()
        before = text[max(m.start() - 6, 0) : m.start()]
        if name in _NOT_NAMES or (
            _SENTENCE_OPENING.search(before) and not _HONORIFIC.search(before)
        ):
            continue
        counts[name] = counts.get(name, 0) + 1
    return [name for name, count in counts.items() if count >= 2]


def _check_greeting(
    test_id: str, text: str, rubric: GreetingRubric, repetition: RepetitionResult
) -> CheckResult:
    non_empty = bool(words_of(text))
    greeting = next((m.group() for p in rubric.greeting_patterns if (m := p.search(text))), None)
    relevant = next((m.group() for p in rubric.relevant_patterns if (m := p.search(text))), None)
    answers = non_empty and (greeting is not None or relevant is not None)
    detail: JSONObject = {
        "kind": rubric.kind,
        "non_empty": non_empty,
        "greeting": greeting,
        "relevant": None if relevant is None else clip_text(relevant, 60),
        "no_loop": not repetition.loop_detected,
    }
    passed = answers and not repetition.loop_detected
    return CheckResult(test_id, rubric.kind, passed, 1.0 if answers else 0.0, None, None, detail)
