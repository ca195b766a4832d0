"""Automated quality scoring over stored facts; never a live server.

What this module exports is pure functions over a request's stored facts: the
caller passes a request's test id, output text, finish reason and status and
gets the results back (a test's check may run the model's code in the sandbox, a
separate process: scoring.sandbox). Three modules of the package use the
database: scoring.store (`rescore_campaign`) reads the stored rows and replaces
the campaign's `scores`, `placement_checks` and `gates`, each row with
`SCORER_VERSION`; scoring.gates reads stored rows to decide the gates; and
scoring.review writes human scores into `reviews`. Raw rows are never written.

`SCORER_VERSION` is "<algorithm>+rubric.<rubric_version>". Bump the
algorithm number whenever a code change could change any stored score value
or detail (a formula, a threshold, a tokeniser, a parser, the sandbox's
verdict); bump `rubric_version` in scoring/rubrics/protocol-tests.toml, and
the suffix here with it, whenever the rubric data changes. Scores with
different versions are never mixed: the report recomputes or filters.
"""

from __future__ import annotations

from scoring.checks import CheckResult, check_output, known_test_ids
from scoring.quality import quality_score, score_request
from scoring.repetition import RepetitionResult, analyse_repetition
from scoring.score import Score
from scoring.similarity import Similarity, compare_outputs, similarity_scores

SCORER_VERSION = "4+rubric.1"

__all__ = [
    "SCORER_VERSION",
    "CheckResult",
    "RepetitionResult",
    "Score",
    "Similarity",
    "analyse_repetition",
    "check_output",
    "compare_outputs",
    "known_test_ids",
    "quality_score",
    "score_request",
    "similarity_scores",
]
