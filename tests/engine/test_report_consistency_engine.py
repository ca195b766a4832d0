"""A real quick campaign's site agrees with itself and with its store: the checks of
tests/test_report_consistency.py (tests.support.consistency.check_site) on engine data."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.consistency import check_site
from tests.support.report import build, project


@pytest.mark.engine
def test_a_real_quick_campaign_agrees_with_itself(quick_store: Path, tmp_path: Path) -> None:
    root = project(tmp_path)
    check_site(quick_store, root, build(quick_store, root))
