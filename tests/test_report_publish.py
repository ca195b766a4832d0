"""`nox -s publish -- VERSION`: mike deploys each version beside the earlier ones."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from common.errors import BuildError
from report.publish import publish
from tests.support.report import project, synthetic_store

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="publishing needs git")


# Who commits: mike's commits to gh-pages need a name and an address on any machine.
GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "t@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "t@example.invalid",
}


@pytest.fixture
def git_identity(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in GIT_IDENTITY.items():
        monkeypatch.setenv(key, value)


def _git(root: Path, *args: str) -> str:
    env = {**os.environ, **GIT_IDENTITY}
    return subprocess.run(
        ["git", *args], cwd=root, check=True, capture_output=True, text=True, env=env
    ).stdout


@pytest.mark.usefixtures("git_identity")
def test_two_versions_side_by_side_with_their_campaigns(tmp_path: Path) -> None:
    root = project(tmp_path)
    _git(root, "init", "-q", "-b", "main")
    old_db, new_db = tmp_path / "old.duckdb", tmp_path / "new.duckdb"
    old_id = synthetic_store(old_db)
    new_id = synthetic_store(new_db, seed=7)

    publish("1.6.0", db=old_db, root=root)
    publish("1.7.0", db=new_db, root=root)

    versions = json.loads(_git(root, "show", "gh-pages:versions.json"))
    by_version = {v["version"]: v for v in versions}
    assert set(by_version) == {"1.6.0", "1.7.0"}
    assert by_version["1.7.0"]["aliases"] == ["latest"]
    assert by_version["1.6.0"]["aliases"] == []
    assert by_version["1.6.0"]["properties"] == {"campaigns": [old_id]}
    assert by_version["1.7.0"]["properties"] == {"campaigns": [new_id]}
    files = _git(root, "ls-tree", "-r", "--name-only", "gh-pages").splitlines()
    assert "1.6.0/index.html" in files and "1.7.0/index.html" in files
    page = _git(root, "show", "gh-pages:1.7.0/index.html")
    assert new_id in page and "whitepaper version 1.7.0" in page
    log = _git(root, "log", "--format=%s", "gh-pages")
    assert f"campaign(s) {new_id}" in log and f"campaign(s) {old_id}" in log
    redirect = _git(root, "show", "gh-pages:index.html")
    assert "latest" in redirect


def test_publishing_an_empty_store_is_refused(tmp_path: Path) -> None:
    from evidence.store import open_store

    root = project(tmp_path)
    _git(root, "init", "-q")
    db = tmp_path / "empty.duckdb"
    with open_store(db):
        pass
    with pytest.raises(BuildError, match="holds no campaign"):
        publish("1.7.0", db=db, root=root)


@pytest.mark.usefixtures("git_identity")
def test_a_version_spanning_two_releases_publishes_its_history_page(tmp_path: Path) -> None:
    # Regression: mike built from mkdocs.yml, whose navigation had no History page, so
    # strict mode refused the history.md the build had written and nothing was published.
    from evidence.store import open_store

    root = project(tmp_path)
    _git(root, "init", "-q", "-b", "main")
    db = tmp_path / "two.duckdb"
    for release, seed in (("1.6.0", 1), ("1.7.0", 7)):
        campaign = synthetic_store(db, seed=seed)
        with open_store(db) as con:
            con.execute(
                "UPDATE campaigns SET release_label = ? WHERE campaign_id = ?", [release, campaign]
            )

    publish("1.7.0", db=db, root=root, all_campaigns=True)

    files = _git(root, "ls-tree", "-r", "--name-only", "gh-pages").splitlines()
    assert "1.7.0/history/index.html" in files
    assert 'href="history/"' in _git(root, "show", "gh-pages:1.7.0/index.html")
