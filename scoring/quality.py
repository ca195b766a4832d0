"""All scores of one request, and the 1-5 quality score that sums them up.

**Completed**: the metric `completed` (evidence.metrics, the one definition):
the server answered and generation ended normally, finish reason "stop" (the
model finished) or "length" (it used its whole token budget, which the
protocol's short budgets make common). The scorer reads it from the store.

**Quality** (1 to 5, in half points):

    not completed:  quality = 1
    completed:      quality = 1 + c × (2 + (1 − r) + (1 − L)),
                    rounded to the nearest half point (halves up)

where c is the check's graded score (0 to 1, see `scoring.checks`), r the
repetition score (0 to 1) and L is 1 when a loop was detected, else 0. So a
completed response that fully passes its check, repeats nothing and does not
loop scores 5; one that fails its check entirely scores 1 however fluent it
is, because fluency only counts for content that does its job; repetition and
a loop each take up to one point from what the check earned. The formula is
monotone: quality never drops when c rises, r falls, or a loop goes away.

A request that returned an answer but did not complete (an unexpected finish
reason) still gets its repetition, loop and check scores, computed on its
text; only its quality is pinned to 1.

**Not measured**: a request that returned no answer (status not `ok`: it timed
out, lost its connection, got an HTTP error or broke off) is given no
repetition, loop, check or quality score at all, only `completed` = 0. What
arrived before the fault is a fragment; judging it would report the server's
failure, or the collector's deadline, as the model's quality. The request's
status and error say why, and every page shows "not measured" with them.

**Not judged**: an output the campaign's profile cut short on purpose (the
quick profile caps budgets below the protocol's, and the output reached the
cap) cannot pass or fail a check written for the whole answer, so its check
and quality are stored without a value (`not_judged` in the detail), shown as
"not measured" everywhere, never as a low score. Repetition and loops are
still judged on what arrived.
"""

from __future__ import annotations

import math

from scoring.checks import CheckResult, check_output
from scoring.repetition import analyse_repetition
from scoring.rubric import load_rubrics
from scoring.sandbox import SandboxLimits
from scoring.score import JSONObject, Score

QUALITY_FORMULA = "1 if not completed, else round_half(1 + c*(2 + (1 - r) + (1 - loop)))"


def quality_score(completed: bool, check_score: float, repetition: float, loop: bool) -> float:
    """The 1-5 quality score (see the module docstring for the formula)."""
    if not completed:
        return 1.0
    c = min(max(check_score, 0.0), 1.0)
    r = min(max(repetition, 0.0), 1.0)
    raw = 1.0 + c * (2.0 + (1.0 - r) + (0.0 if loop else 1.0))
    return math.floor(raw * 2.0 + 0.5) / 2.0


def score_request(
    test_id: str,
    output_text: str | None,
    completed: bool,
    max_tokens: int | None,
    *,
    finish_reason: str | None = None,
    finish_reason_inferred: str | None = None,
    status: str | None = None,
    cut_by_cap: bool = False,
    sandbox_limits: SandboxLimits | None = None,
) -> list[Score]:
    """Every score of one request, from its stored facts.

    Names: `repetition`, `loop`, `completed`, and for a test the rubric knows,
    `check`, `check_coverage` (coverage and narrative checks),
    `check_text` (water-jug check) and `quality`. Raises `SandboxError` only
    when code cannot be run at all; the caller should then store nothing for
    this request rather than a failed check. A request with no stored text
    (`output_text` None) is scored as the empty text. `completed` is the store's
    `completed` metric; `finish_reason` (the server's), `finish_reason_inferred` (the
    store's, which says `length` where a server that always says `stop` reached the
    budget) and `status` are kept in the detail. A
    request whose `status` is not "ok" (None counts as ok) gets `completed` alone.
    """
    completion = Score(
        "completed",
        1.0 if completed else 0.0,
        {
            "status": status,
            "finish_reason": finish_reason,
            "finish_reason_inferred": finish_reason_inferred,
            "max_tokens": max_tokens,
            # The inferred reason (the store's `finish_reason_inferred`): Shimmy 1.7.0
            # says `stop` even when the output reached the budget.
            "hit_token_budget": (finish_reason_inferred or finish_reason) == "length",
        },
    )
    if status not in (None, "ok"):
        return [completion]  # no answer: nothing to judge (the module docstring)
    output_text = output_text or ""
    repetition = analyse_repetition(output_text)
    scores = [
        Score("repetition", repetition.repetition_score, repetition.as_detail()),
        Score(
            "loop",
            1.0 if repetition.loop_detected else 0.0,
            {
                "start_char": repetition.loop_start_char,
                "span": repetition.as_detail()["loop_span"],
                "repeats": repetition.loop_repeats,
                "kind": repetition.loop_kind,
            },
        ),
        completion,
    ]
    if test_id not in load_rubrics().tests:
        return scores
    if cut_by_cap:
        why: JSONObject = {
            "not_judged": f"the output reached the profile's {max_tokens}-token cap, below the "
            "protocol's budget: a check written for the whole answer cannot judge it"
        }
        return [*scores, Score("check", None, dict(why)), Score("quality", None, dict(why))]
    check = check_output(test_id, output_text, repetition=repetition, sandbox_limits=sandbox_limits)
    scores += _check_scores(check)
    quality_detail: JSONObject = {
        "formula": QUALITY_FORMULA,
        "completed": completed,
        "check_score": check.score,
        "repetition": repetition.repetition_score,
        "loop": repetition.loop_detected,
    }
    scores.append(
        Score(
            "quality",
            quality_score(
                completed, check.score, repetition.repetition_score, repetition.loop_detected
            ),
            quality_detail,
        )
    )
    return scores


def _check_scores(check: CheckResult) -> list[Score]:
    scores = [Score("check", 1.0 if check.passed else 0.0, check.detail | {"score": check.score})]
    if check.coverage is not None:
        scores.append(
            Score("check_coverage", check.coverage, {"kind": check.kind, "test_id": check.test_id})
        )
    if check.text_signal is not None:
        scores.append(
            Score(
                "check_text",
                1.0 if check.text_signal else 0.0,
                {"kind": check.kind, "replay_parsed": check.detail.get("parsed")},
            )
        )
    return scores
