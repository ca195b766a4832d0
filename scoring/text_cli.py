"""`moe-evidence score-text`: score a text read from stdin.

Prints the repetition score and loop verdict, and with `--test TEST_ID` that
test's automated check too; `--json` prints one JSON object instead of the
human-readable lines. Errors of this tool (`EvidenceError`) propagate to the
CLI, which prints them and exits 1.
"""

from __future__ import annotations

import json

from common.errors import ConfigError
from scoring.checks import CheckResult, check_output, known_test_ids
from scoring.repetition import RepetitionResult, analyse_repetition
from scoring.score import JSONObject, clip_text


def score_text(text: str, *, test_id: str | None = None, as_json: bool = False) -> str:
    """`score-text`: the repetition score and loop detection of `text`, with the
    automated check of protocol test `test_id` when given; as lines or JSON."""
    if test_id is not None and test_id not in known_test_ids():
        raise ConfigError(f"unknown test {test_id!r}; known: {', '.join(known_test_ids())}")
    repetition = analyse_repetition(text)
    check = check_output(test_id, text, repetition=repetition) if test_id is not None else None
    if as_json:
        return json.dumps(_as_json(repetition, check), indent=2)
    return "\n".join(_as_lines(repetition, check))


def _as_json(repetition: RepetitionResult, check: CheckResult | None) -> JSONObject:
    result = repetition.as_detail()
    if check is not None:
        result["check"] = {
            "test_id": check.test_id,
            "kind": check.kind,
            "passed": check.passed,
            "score": check.score,
            "coverage": check.coverage,
            "text_signal": check.text_signal,
            "detail": check.detail,
        }
    return result


def _as_lines(repetition: RepetitionResult, check: CheckResult | None) -> list[str]:
    lines = [
        f"repetition_score: {repetition.repetition_score:.3f}",
        f"loop_detected: {'true' if repetition.loop_detected else 'false'}",
        f"loop_start_char: {_or_none(repetition.loop_start_char)}",
    ]
    if repetition.loop_detected and repetition.loop_span is not None:
        lines.append(f"loop_repeats: {repetition.loop_repeats}")
        lines.append(f"loop_span: {clip_text(repetition.loop_span, 120)!r}")
    if check is None:
        return lines
    lines.append(f"check ({check.test_id}, {check.kind}): {'pass' if check.passed else 'fail'}")
    lines.append(f"check_score: {check.score:.2f}")
    if check.coverage is not None:
        lines.append(f"check_coverage: {check.coverage:.2f}")
    if check.text_signal is not None:
        lines.append(f"check_text: {'true' if check.text_signal else 'false'}")
    lines += [f"  {line}" for line in _explain(check)]
    return lines


def _or_none(value: int | None) -> str:
    return "none" if value is None else str(value)


def _explain(check: CheckResult) -> list[str]:
    """A few human-readable lines on what the check found."""
    detail = check.detail
    if check.kind == "coverage":
        concepts = detail.get("concepts")
        if isinstance(concepts, dict):
            missing = [name for name, hit in concepts.items() if hit is None]
            return [f"missing concepts: {', '.join(missing) or 'none'}"]
    if check.kind == "python-function":
        lines = [f"code: {detail.get('extraction')}, function {detail.get('function')!r}"]
        cases = detail.get("cases")
        for case in cases if isinstance(cases, list) else []:
            if isinstance(case, dict):
                verdict = "ok" if case.get("passed") else f"got {case.get('returned')}"
                lines.append(f"{case.get('args')} -> {case.get('expected')}: {verdict}")
        if detail.get("error"):
            lines.append(f"error: {detail.get('error')}")
        return lines
    if check.kind == "water-jugs":
        return [
            f"replay: {detail.get('actions_parsed')} steps parsed, "
            f"target reached at step {detail.get('first_reach_action')}"
        ]
    keys = ("structure", "length", "character", "non_empty", "greeting", "relevant", "no_loop")
    return [f"{key}: {detail[key]}" for key in keys if key in detail]
