"""Replay a water-jug answer ("3-gallon and 5-gallon jugs, measure 4") step by step.

The answer's instructions are read clause by clause: every "fill", "empty",
"pour" (or "transfer", "dump", "refill") starts a clause that runs to the
next such verb or the end of the sentence. Each clause becomes one action on
the jugs it names ("the 5-gallon jug", "the three-gallon one", "the smaller
jug"):

- *fill X* fills X to the brim; *fill X from Y* is a pour from Y into X;
- *empty X*, *dump X*, *pour X out* / *away* empties X; *empty X into Y* is a pour;
- *pour (from) X into Y*, *transfer*, *use X to fill Y* move water until X
  is empty or Y is full, whatever amount the answer says it pours; *top up X*
  pours from the other jug into X. A pour that names only one jug takes the
  other one as its partner ("pour 1 gallon into the 3-gallon jug").

"It" stands for the jug mentioned last before the clause, "the other jug"
for the one not mentioned last.

Descriptions rather than instructions are skipped: "the jug is empty", "the
empty jug", "after pouring". The replay passes when some jug holds exactly
the target amount after some action. Separately, a weaker text signal records
whether the answer *says* it ends with the target amount ("now the 5-gallon
jug has 4 gallons"), so a report can tell a replay that did not parse from an
answer that is wrong.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from scoring.score import JSONObject, clip_text

_NUMBER_WORDS = {
    1: "one",
    2: "two",
    3: "three",
    4: "four",
    5: "five",
    6: "six",
    7: "seven",
    8: "eight",
    9: "nine",
    10: "ten",
    11: "eleven",
    12: "twelve",
}
_VERB = re.compile(
    r"\b(refill|fill|empty|dump|pour|transfer|top(?=\s+(?:up|off)\b)"
    r"|use(?=[^.!?;\n]*?\bto\s+(?:fill|top)\b))\b",
    re.IGNORECASE,
)
# "empty" used as an adjective ("the jug is empty", "the empty jug").
_ADJECTIVE_EMPTY = re.compile(
    r"\b(?:is|are|be|being|been|now|remains?|still|completely|totally|fully|an?|the|both|becomes?|left|stays?)\s+$",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"[^.!?;\n]+(?:[.!?;]+|$)", re.MULTILINE)
_TARGET_MARK = re.compile(
    r"\b(?:into|onto|to|fill(?:\s+up)?)\s+(?:the\s+|that\s+|this\s+|your\s+)?$", re.IGNORECASE
)
# A verb in a purpose clause ("pour ... to fill it") describes the previous
# instruction rather than starting a new one.
_PURPOSE = re.compile(r"\b(?:to|until(?:\s+you)?|and\s+so)\s+$", re.IGNORECASE)
_SOURCE_MARK = re.compile(
    r"\b(?:from|of|using|with)\s+(?:the\s+|that\s+|this\s+|your\s+)?$", re.IGNORECASE
)
_POUR_AWAY = re.compile(r"\b(?:out|away|drain|sink|ground|discard)\b(?!\s+of\b)", re.IGNORECASE)
_PRONOUN = re.compile(r"\b(?:it|that jug|this jug|the jug)\b", re.IGNORECASE)
_OTHER = re.compile(r"\bthe other (?:jug|one)\b", re.IGNORECASE)
_GOAL = re.compile(
    r"\bmeasure\b|\b(?:goal|aim|objective|task|want|need|how)\b|\bto (?:get|obtain|end up)\b",
    re.IGNORECASE,
)


@dataclass(frozen=True)
class JugAction:
    """One parsed instruction and the jug contents after it."""

    kind: Literal["fill", "empty", "pour"]
    jug: int
    into: int | None
    clause: str
    state_after: tuple[int, ...]

    def as_detail(self) -> JSONObject:
        """The action as a JSON-able dict."""
        return {
            "action": self.kind,
            "jug": self.jug,
            "into": self.into,
            "clause": clip_text(self.clause, 120),
            "state_after": list(self.state_after),
        }


@dataclass(frozen=True)
class JugSimulation:
    """The replay of an answer: its actions, and whether the target was reached."""

    capacities: tuple[int, ...]
    target: int
    actions: tuple[JugAction, ...]
    first_reach: int | None
    text_claims_target: bool

    @property
    def reached_target(self) -> bool:
        """True when some jug held exactly the target after some action."""
        return self.first_reach is not None

    @property
    def parsed(self) -> bool:
        """True when at least two instructions were understood."""
        return len(self.actions) >= 2

    def as_detail(self) -> JSONObject:
        """The replay as a JSON-able dict."""
        return {
            "capacities": list(self.capacities),
            "target": self.target,
            "parsed": self.parsed,
            "actions_parsed": len(self.actions),
            "reached_target": self.reached_target,
            "first_reach_action": self.first_reach,
            "text_claims_target": self.text_claims_target,
            "actions": [action.as_detail() for action in self.actions[:40]],
        }


@dataclass(frozen=True)
class _Mention:
    jug: int
    start: int
    role: Literal["source", "target", "bare"]


def simulate_jugs(text: str, capacities: tuple[int, int], target: int) -> JugSimulation:
    """Parse the answer's fill/empty/pour steps and replay them on empty jugs."""
    mention = _mention_pattern(capacities)
    amounts = dict.fromkeys(capacities, 0)
    actions: list[JugAction] = []
    first_reach: int | None = None
    last_jug: int | None = None
    for sentence in _SENTENCE.finditer(text):
        lead, clauses = _clauses(sentence.group())
        last_jug = _last_named(lead, mention, capacities, last_jug)
        for clause in clauses:
            parsed = _action(clause, _mentions(clause, mention, capacities, last_jug), capacities)
            last_jug = _last_named(clause, mention, capacities, last_jug)
            if parsed is None:
                continue
            kind, jug, into = parsed
            _apply(amounts, kind, jug, into)
            state = tuple(amounts[c] for c in capacities)
            actions.append(JugAction(kind, jug, into, clause.strip(), state))
            if first_reach is None and target in state:
                first_reach = len(actions)
    return JugSimulation(
        capacities=tuple(capacities),
        target=target,
        actions=tuple(actions),
        first_reach=first_reach,
        text_claims_target=claims_target(text, target),
    )


def claims_target(text: str, target: int) -> bool:
    """Whether the text states that a jug ends up holding `target` gallons.

    Restatements of the task ("measure exactly 4 gallons", "the goal is to
    get 4 gallons") do not count.
    """
    amount = rf"(?:{target}|{_NUMBER_WORDS.get(target, str(target))})\s*-?\s*gallons?\b"
    claim = re.compile(
        rf"\b(?:now|have|has|contains?|holds?|left with|leaves?|leaving|remains?|remaining"
        rf"|there (?:are|is)|exactly|result)\b[^.!?\n]{{0,60}}?\b{amount}"
        rf"|\b{amount}[^.!?\n]{{0,40}}?\b(?:left|remain\w*|in the)\b",
        re.IGNORECASE,
    )
    return any(
        claim.search(sentence.group()) and not _GOAL.search(sentence.group())
        for sentence in _SENTENCE.finditer(text)
    )


def _mention_pattern(capacities: tuple[int, int]) -> re.Pattern[str]:
    sizes = "|".join(alt for c in capacities for alt in (str(c), _NUMBER_WORDS.get(c, str(c))))
    unit = r"(?:gallon|gal|liter|litre)"
    return re.compile(
        rf"\b(?P<size>{sizes})(?:\s*-\s*{unit}s?\b|\s*{unit}\b(?!s)|\s*{unit}s\s+(?:jug|container|bucket|pail)"
        rf"|(?:g|l)\b)"
        r"|\b(?P<small>small(?:er|est)?|little)\s+(?:jug|one|container|bucket|pail)\b"
        r"|\b(?P<large>large(?:r|st)?|big(?:ger|gest)?)\s+(?:jug|one|container|bucket|pail)\b",
        re.IGNORECASE,
    )


def _clauses(sentence: str) -> tuple[str, list[str]]:
    """Split a sentence into the text before its first instruction and its clauses."""
    verbs: list[re.Match[str]] = []
    for m in _VERB.finditer(sentence):
        before = sentence[: m.start()]
        if m.group(1).lower() == "empty" and _ADJECTIVE_EMPTY.search(before):
            continue
        if verbs and _PURPOSE.search(before):
            continue
        verbs.append(m)
    lead = sentence[: verbs[0].start()] if verbs else sentence
    return lead, [
        sentence[m.start() : verbs[i + 1].start() if i + 1 < len(verbs) else len(sentence)]
        for i, m in enumerate(verbs)
    ]


def _last_named(
    text: str, pattern: re.Pattern[str], capacities: tuple[int, int], last_jug: int | None
) -> int | None:
    """The jug `text` names last (pronouns aside), else the one named before."""
    named = _mentions(text, pattern, capacities, None)
    return named[-1].jug if named else last_jug


def _mentions(
    clause: str, pattern: re.Pattern[str], capacities: tuple[int, int], last_jug: int | None
) -> list[_Mention]:
    """The jugs a clause names, in order, with the role its preposition gives each.

    "it" stands for the jug mentioned last before this clause, "the other
    jug" for the one not mentioned last.
    """
    found: list[tuple[int, int]] = []
    for m in pattern.finditer(clause):
        if m.group("small"):
            found.append((m.start(), min(capacities)))
        elif m.group("large"):
            found.append((m.start(), max(capacities)))
        else:
            size = m.group("size").lower()
            found.append(
                (m.start(), next(c for c in capacities if size in (str(c), _NUMBER_WORDS.get(c))))
            )
    if last_jug is not None:
        found += [(m.start(), last_jug) for m in _PRONOUN.finditer(clause)]
        other = next(c for c in capacities if c != last_jug)
        found += [(m.start(), other) for m in _OTHER.finditer(clause)]
    mentions = []
    for start, jug in sorted(found):
        before = clause[:start]
        role: Literal["source", "target", "bare"] = (
            "target"
            if _TARGET_MARK.search(before)
            else "source"
            if _SOURCE_MARK.search(before)
            else "bare"
        )
        mentions.append(_Mention(jug, start, role))
    return mentions


def _action(
    clause: str, mentions: list[_Mention], capacities: tuple[int, int]
) -> tuple[Literal["fill", "empty", "pour"], int, int | None] | None:
    verb = clause.split(maxsplit=1)[0].lower()
    other = {c: next(o for o in capacities if o != c) for c in capacities}
    sources = [m.jug for m in mentions if m.role == "source"]
    targets = [m.jug for m in mentions if m.role == "target"]
    not_source = [m.jug for m in mentions if m.role != "source"]
    if verb in ("fill", "refill", "top"):
        if not not_source:
            return None
        jug = not_source[0]
        if sources and sources[0] != jug:
            return "pour", sources[0], jug
        return ("pour", other[jug], jug) if verb == "top" else ("fill", jug, None)
    if verb in ("empty", "dump"):
        if not mentions:
            return None
        jug = mentions[0].jug
        if targets and targets[0] != jug:
            return "pour", jug, targets[0]
        return "empty", jug, None
    # pour, transfer, "use X to fill Y"
    named = {m.jug for m in mentions}
    if not targets and len(named) == 1 and _POUR_AWAY.search(clause):
        return "empty", mentions[0].jug, None
    source = sources[0] if sources else None
    into = targets[0] if targets else None
    for m in mentions:
        if m.role != "bare":
            continue
        if source is None and m.jug != into:
            source = m.jug
        elif into is None and m.jug != source:
            into = m.jug
    if source is None and into is not None:
        source = other[into]
    if into is None and source is not None:
        into = other[source]
    if source is None or into is None or source == into:
        return None
    return "pour", source, into


def _apply(
    amounts: dict[int, int], kind: Literal["fill", "empty", "pour"], jug: int, into: int | None
) -> None:
    if kind == "fill":
        amounts[jug] = jug  # jugs are named by their capacity
    elif kind == "empty":
        amounts[jug] = 0
    elif into is not None:
        moved = min(amounts[jug], into - amounts[into])
        amounts[jug] -= moved
        amounts[into] += moved
