"""The rubric: per-test check settings, read from versioned TOML data.

The data lives in `scoring/rubrics/protocol-tests.toml`; this module turns it
into typed values through pydantic models (one per check kind, chosen by the
`kind` key) and says which key is wrong when it is malformed.
"""

from __future__ import annotations

import functools
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from common.errors import ConfigError
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


# The file's shape, validated by pydantic; `parse_rubrics` turns it into the
# frozen dataclasses above, which is all the checks see.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _compile(patterns: list[str]) -> list[str]:
    for pattern in patterns:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"bad pattern {pattern!r}: {exc}") from exc
    return patterns


Patterns = Annotated[list[str], Field(min_length=1), AfterValidator(_compile)]
Share = Annotated[float, Field(ge=0, le=1)]


class _Concept(_Strict):
    name: Annotated[str, Field(min_length=1)]
    patterns: Patterns


class _Coverage(_Strict):
    kind: Literal["coverage"]
    concepts: Annotated[list[_Concept], Field(min_length=1)]
    pass_threshold: Share


class _Case(_Strict):
    args: list[int]
    expected: int


class _Function(_Strict):
    kind: Literal["python-function"]
    function_hint: Annotated[str, Field(min_length=1)]
    cases: Annotated[list[_Case], Field(min_length=1)]


class _Jugs(_Strict):
    kind: Literal["water-jugs"]
    jugs: tuple[int, int]
    target: int

    @field_validator("jugs")
    @classmethod
    def _two_capacities(cls, jugs: tuple[int, int]) -> tuple[int, int]:
        if jugs[0] == jugs[1] or min(jugs) <= 0:
            raise ValueError("must be two different capacities")
        return jugs


class _Narrative(_Strict):
    kind: Literal["narrative"]
    min_words: int
    min_paragraphs: int
    min_sentences: int
    paragraph_min_words: int
    character_patterns: Patterns


class _Greeting(_Strict):
    kind: Literal["greeting"]
    greeting_patterns: Patterns
    relevant_patterns: Patterns


class _File(_Strict):
    rubric_version: int
    protocol_version: Annotated[str, Field(min_length=1)]
    tests: dict[
        str,
        Annotated[
            _Coverage | _Function | _Jugs | _Narrative | _Greeting, Field(discriminator="kind")
        ],
    ]


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("coverage", "python-function", "water-jugs", "narrative", "greeting"):
            out += f".{part}" if out else str(part)
    return out


def parse_rubrics(data: Mapping[str, Any]) -> Rubrics:
    """Validate rubric data (as read from TOML) and compile its patterns."""
    try:
        raw = _File.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ConfigError(f"rubric key {_where(first['loc'])}: {first['msg']}") from exc
    return Rubrics(
        rubric_version=raw.rubric_version,
        protocol_version=raw.protocol_version,
        tests={test_id: _rubric(test) for test_id, test in raw.tests.items()},
    )


def _flags(patterns: list[str]) -> tuple[re.Pattern[str], ...]:
    return tuple(re.compile(p, re.IGNORECASE | re.MULTILINE) for p in patterns)


def _rubric(test: _Coverage | _Function | _Jugs | _Narrative | _Greeting) -> TestRubric:
    if isinstance(test, _Coverage):
        return CoverageRubric(
            concepts=tuple(Concept(c.name, _flags(c.patterns)) for c in test.concepts),
            pass_threshold=test.pass_threshold,
        )
    if isinstance(test, _Function):
        return FunctionRubric(
            function_hint=test.function_hint,
            cases=tuple(FunctionCase(tuple(c.args), c.expected) for c in test.cases),
        )
    if isinstance(test, _Jugs):
        return JugRubric(jugs=test.jugs, target=test.target)
    if isinstance(test, _Narrative):
        return NarrativeRubric(
            min_words=test.min_words,
            min_paragraphs=test.min_paragraphs,
            min_sentences=test.min_sentences,
            paragraph_min_words=test.paragraph_min_words,
            character_patterns=_flags(test.character_patterns),
        )
    return GreetingRubric(
        greeting_patterns=_flags(test.greeting_patterns),
        relevant_patterns=_flags(test.relevant_patterns),
    )
