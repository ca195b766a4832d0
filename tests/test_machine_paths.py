"""Pages name files, never the directories of the machines that collected or built."""

from __future__ import annotations

import html
from pathlib import Path

import duckdb

from report.machine_paths import (
    build_machine_paths,
    is_machine_path,
    public_arg,
    public_value,
    user_command,
)
from tests.support.report import build, project, synthetic_store


def test_file_paths_become_file_names_and_url_paths_stay() -> None:
    assert public_arg("/root/.cache/moe-evidence/engine/build/bin/llama-server") == "llama-server"
    assert public_arg(r"C:\Users\bob\shimmy\shimmy.exe") == "shimmy.exe"
    assert public_arg("--model=/srv/models/q.gguf") == "--model=q.gguf"
    assert public_arg("/health") == "/health" and not is_machine_path("/health")
    assert public_arg("http://127.0.0.1:8080/v1/models") == "http://127.0.0.1:8080/v1/models"
    config = {"server": {"health_path": "/v1/health/live", "env": {"X": "/opt/lib/a"}}}
    assert public_value(config) == {"server": {"health_path": "/v1/health/live", "env": {"X": "a"}}}


def test_the_command_shown_is_the_one_a_reader_types() -> None:
    assert user_command(["moe-evidence", "collect", "--quick"]) == [
        "nox", "-s", "collect", "--", "--quick",
    ]  # fmt: skip
    # As older collectors stored it: the virtual environment's python, absolute paths.
    old = ["/work/main/.nox/tests/bin/python", "-m", "collector", "run", "--db", "/tmp/a/e.duckdb"]
    assert user_command(old) == ["nox", "-s", "collect", "--", "--db", "e.duckdb"]
    assert user_command(["moe-evidence", "collect"]) == ["nox", "-s", "collect"]


def test_root_level_directories_are_not_forbidden(tmp_path: Path) -> None:
    found = build_machine_paths(Path("/"), Path("/usr"), tmp_path)
    assert "/" not in found and "/usr" not in found and str(tmp_path.resolve()) in found


def test_a_store_full_of_machine_paths_builds_a_site_that_names_none(tmp_path: Path) -> None:
    db = tmp_path / "store" / "evidence.duckdb"
    db.parent.mkdir()
    synthetic_store(db)
    # What a real collector on this machine records: absolute paths under the store's own
    # directory and this home, in the command, the server argv, the engine and the model.
    where = str(db.parent.resolve())
    with duckdb.connect(str(db)) as con:
        con.execute(
            "UPDATE campaigns SET command = ?, engine = ?",
            [
                f'["{where}/venv/bin/python", "-m", "moe_evidence", "collect", "--db", "{db}"]',
                '{"engine": "llama.cpp", "build": "b11434", '
                f'"server": "{where}/bin/llama-server"}}',
            ],
        )
        con.execute(
            "UPDATE server_runs SET argv = ?",
            [f'["{where}/bin/llama-server", "-m", "{where}/models/m.gguf", "--port", "1"]'],
        )
        con.execute("UPDATE models SET path = ?", [f"{where}/models/m.gguf"])
    root = project(tmp_path)
    result = build(db, root)
    pages = [*(root / "docs").rglob("*.md"), *result.site_dir.rglob("*.html")]
    assert pages
    for page in pages:
        # The filters write `.` and `-` as entities; read the text as a browser shows it.
        assert where not in html.unescape(page.read_text(encoding="utf-8")), page
    reproduce = html.unescape((root / "docs" / "reproduce.md").read_text(encoding="utf-8"))
    assert "nox -s collect -- --db evidence.duckdb" in reproduce
