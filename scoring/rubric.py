"""The rubric: per-test check settings, read from versioned TOML data.

The data lives in `scoring/rubrics/protocol-tests.toml`; this module only
turns it into typed values and says which key is wrong when it is malformed.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from evidence.errors import ConfigError
from scoring.sandbox import FunctionCase

RUBRIC_FILE = "protocol-tests.toml"


@dataclass(frozen=True)
class Concept:
    """An idea a good answer mentions, recognised by any of its patterns."""

    name: str
    patterns: tuple[re.Pattern[str], ...]


@dataclass(frozen=True)
class CoverageRubric:
    """Pass when the share of concepts covered reaches `pass_threshold`."""

    concepts: tuple[Concept, ...]
    pass_threshold: float
    kind: str = "coverage"


@dataclass(frozen=True)
class FunctionRubric:
    """Run the code's function (chosen by `function_hint`) on these cases."""

    function_hint: str
    cases: tuple[FunctionCase, ...]
    kind: str = "python-function"


@dataclass(frozen=True)
class JugRubric:
    """Replay the jug steps; pass when a jug holds exactly `target`."""

    jugs: tuple[int, int]
    target: int
    kind: str = "water-jugs"


@dataclass(frozen=True)
class NarrativeRubric:
    """Story structure thresholds and extra patterns that reveal a character."""

    min_words: int
    min_paragraphs: int
    min_sentences: int
    paragraph_min_words: int
    character_patterns: tuple[re.Pattern[str], ...]
    kind: str = "narrative"


@dataclass(frozen=True)
class GreetingRubric:
    """Patterns of a greeting, and of other replies relevant to "how are you?"."""

    greeting_patterns: tuple[re.Pattern[str], ...]
    relevant_patterns: tuple[re.Pattern[str], ...]
    kind: str = "greeting"


TestRubric = CoverageRubric | FunctionRubric | JugRubric | NarrativeRubric | GreetingRubric


@dataclass(frozen=True)
class Rubrics:
    """All per-test rubrics, with the version stored next to every check."""

    rubric_version: int
    protocol_version: str
    tests: Mapping[str, TestRubric]


@functools.cache
def load_rubrics() -> Rubrics:
    """The packaged rubric file, parsed once."""
    source = resources.files("scoring").joinpath("rubrics", RUBRIC_FILE)
    try:
        data = tomllib.loads(source.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the rubric scoring/rubrics/{RUBRIC_FILE}: {exc}") from exc
    return parse_rubrics(data)


def parse_rubrics(data: Mapping[str, Any]) -> Rubrics:
    """Validate rubric data (as read from TOML) and compile its patterns."""
    tests = _table(data, "tests", "")
    return Rubrics(
        rubric_version=_int(data, "rubric_version", ""),
        protocol_version=_str(data, "protocol_version", ""),
        tests={test_id: _test(_table(tests, test_id, "tests."), test_id) for test_id in tests},
    )


def _test(table: Mapping[str, Any], test_id: str) -> TestRubric:
    where = f"tests.{test_id}."
    kind = _str(table, "kind", where)
    if kind == "coverage":
        concepts = table.get("concepts")
        if not isinstance(concepts, list) or not concepts:
            raise ConfigError(f"rubric key {where}concepts must be a non-empty list")
        return CoverageRubric(
            concepts=tuple(
                Concept(
                    name=_str(concept, "name", f"{where}concepts[{i}]."),
                    patterns=_patterns(concept, "patterns", f"{where}concepts[{i}]."),
                )
                for i, concept in enumerate(concepts)
            ),
            pass_threshold=_float(table, "pass_threshold", where),
        )
    if kind == "python-function":
        cases = table.get("cases")
        if not isinstance(cases, list) or not cases:
            raise ConfigError(f"rubric key {where}cases must be a non-empty list")
        return FunctionRubric(
            function_hint=_str(table, "function_hint", where),
            cases=tuple(
                FunctionCase(
                    args=tuple(_int_list(case, "args", f"{where}cases[{i}].")),
                    expected=_int(case, "expected", f"{where}cases[{i}]."),
                )
                for i, case in enumerate(cases)
            ),
        )
    if kind == "water-jugs":
        jugs = _int_list(table, "jugs", where)
        if len(jugs) != 2 or jugs[0] == jugs[1] or min(jugs) <= 0:
            raise ConfigError(f"rubric key {where}jugs must be two different capacities")
        return JugRubric(jugs=(jugs[0], jugs[1]), target=_int(table, "target", where))
    if kind == "narrative":
        return NarrativeRubric(
            min_words=_int(table, "min_words", where),
            min_paragraphs=_int(table, "min_paragraphs", where),
            min_sentences=_int(table, "min_sentences", where),
            paragraph_min_words=_int(table, "paragraph_min_words", where),
            character_patterns=_patterns(table, "character_patterns", where),
        )
    if kind == "greeting":
        return GreetingRubric(
            greeting_patterns=_patterns(table, "greeting_patterns", where),
            relevant_patterns=_patterns(table, "relevant_patterns", where),
        )
    raise ConfigError(
        f"rubric key {where}kind is {kind!r}; expected coverage, python-function, "
        f"water-jugs, narrative or greeting"
    )


def _table(data: Mapping[str, Any], key: str, where: str) -> Mapping[str, Any]:
    value = data.get(key)
    if not isinstance(value, Mapping):
        raise ConfigError(f"rubric key {where}{key} must be a table")
    return value


def _str(data: Mapping[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"rubric key {where}{key} must be a non-empty string")
    return value


def _int(data: Mapping[str, Any], key: str, where: str) -> int:
    value = data.get(key)
    if type(value) is not int:
        raise ConfigError(f"rubric key {where}{key} must be an integer")
    return value


def _float(data: Mapping[str, Any], key: str, where: str) -> float:
    value = data.get(key)
    if not isinstance(value, int | float) or isinstance(value, bool) or not 0 <= value <= 1:
        raise ConfigError(f"rubric key {where}{key} must be a number from 0 to 1")
    return float(value)


def _int_list(data: Mapping[str, Any], key: str, where: str) -> list[int]:
    value = data.get(key)
    if not isinstance(value, list) or not all(type(v) is int for v in value):
        raise ConfigError(f"rubric key {where}{key} must be a list of integers")
    return value


def _patterns(data: Mapping[str, Any], key: str, where: str) -> tuple[re.Pattern[str], ...]:
    value = data.get(key)
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"rubric key {where}{key} must be a non-empty list of strings")
    compiled = []
    for pattern in value:
        try:
            compiled.append(re.compile(pattern, re.IGNORECASE | re.MULTILINE))
        except re.error as exc:
            raise ConfigError(f"rubric key {where}{key}: bad pattern {pattern!r}: {exc}") from exc
    return tuple(compiled)
