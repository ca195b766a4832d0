"""A disk that fills up, at the start of a campaign and in the middle of one.

The story, for real: `moe-evidence collect` measures the calibrated stream server
with its store on a small tmpfs, mounted in a user + mount namespace of its own
(`unshare -rm`), so the disk really says "No space left on device" to DuckDB. A
driver inside the namespace fills the disk at the chosen moment, runs the
collector as a user would, frees the space and resumes, then copies the store
out for the checks. Expected each time: one `error:` line that says "disk full"
and what to do, exit 1, no traceback; what was stored before kept and readable;
the in-flight request stored whole or not at all; the campaign resumable.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from calibration.scenario import Scenario
from calibration.server import CalibratedServer
from tests.support.cli import ROOT, cli_env, collect, query, start_collect

# One test, a slow-ish stream: the disk is filled while a request is in flight.
TOKENS, GAP_S = 20, 0.03
REPEATS = 6
FILLED_AFTER = 2  # requests stored before the disk fills mid-run


def _unshare_works() -> str | None:
    """Why the namespaces cannot be used here, or None when they can."""
    if sys.platform != "linux" or shutil.which("unshare") is None:
        return "needs Linux with unshare(1)"
    probe = subprocess.run(
        ["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return f"user + mount namespaces unavailable: {probe.stderr.strip()[:200]}"
    return None


pytestmark = pytest.mark.skipif(_unshare_works() is not None, reason=str(_unshare_works()))


def _fill(disk: Path) -> None:
    """Write until the disk says it is full."""
    with (disk / "filler").open("wb") as out:
        block = b"\0" * 65536
        try:
            while True:
                out.write(block)
                out.flush()
        except OSError:
            pass


def _run(*args: str) -> dict[str, Any]:
    done = collect(*args)
    return {"rc": done.returncode, "stdout": done.stdout, "stderr": done.stderr}


def drive(disk: str, endpoint: str, out_dir: str) -> None:
    """Run inside the namespace, with a fresh tmpfs mounted at `disk` and a read-only
    one at `out_dir`/read-only."""
    disk_path, out = Path(disk), Path(out_dir)
    db = disk_path / "evidence.duckdb"
    attach = ["--endpoint", endpoint, "--model", "calibration", "--tests", "simple-response"]
    attach += ["--no-non-streaming", "--pause", "0"]
    results: dict[str, Any] = {}

    # 0. A store folder on a read-only disk (as root, permissions would not stop us).
    read_only = out / "read-only" / "data" / "evidence.duckdb"
    results["read_only"] = _run(*attach, "--repeats", "1", "--db", str(read_only))

    # 1. Full before the store exists: nothing can be created.
    _fill(disk_path)
    results["start_no_store"] = _run(*attach, "--repeats", "1", "--db", str(db))
    (disk_path / "filler").unlink()
    for leftover in disk_path.glob("evidence.duckdb*"):
        leftover.unlink()

    # 2. Mid-run: the disk fills while request FILLED_AFTER + 1 streams.
    proc = start_collect(*attach, "--repeats", str(REPEATS), "--db", str(db))
    assert proc.stderr is not None
    lines: list[str] = []
    for line in proc.stderr:
        lines.append(line)
        if sum(" ok " in x for x in lines) == FILLED_AFTER:
            _fill(disk_path)
            break
    rest, err = proc.communicate(timeout=120)
    results["mid_run"] = {"rc": proc.returncode, "stdout": rest, "stderr": "".join(lines) + err}
    shutil.copytree(disk_path, out / "after_mid_run", ignore=shutil.ignore_patterns("filler"))

    # 3. Full at the start of the next campaign, with that store on the disk.
    results["start_with_store"] = _run(*attach, "--repeats", "1", "--db", str(db))
    shutil.copytree(disk_path, out / "after_start", ignore=shutil.ignore_patterns("filler"))

    # 4. Space freed: the interrupted campaign continues where it stopped.
    (disk_path / "filler").unlink()
    campaign = query(db, "SELECT campaign_id FROM campaigns ORDER BY started_utc LIMIT 1")[0][0]
    results["campaign_id"] = campaign
    results["resume"] = _run("--resume", campaign, "--db", str(db))
    shutil.copytree(disk_path, out / "after_resume")
    (out / "results.json").write_text(json.dumps(results), encoding="utf-8")


@pytest.fixture(scope="module")
def disk_full(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("disk_full")
    disk = out / "disk"
    disk.mkdir()
    (out / "read-only").mkdir()
    scenario = Scenario(tokens=TOKENS, gap_s=GAP_S)
    with CalibratedServer(scenario) as server:
        script = (
            'mount -t tmpfs -o size=8m tmpfs "$1" && mount -t tmpfs -o ro,size=64k tmpfs "$6" '
            '&& cd "$4" && exec "$5" -c '
            '"import sys; from tests.test_disk_full import drive; drive(*sys.argv[1:])" '
            '"$1" "$2" "$3"'
        )
        started = time.monotonic()
        argv = ["sh", str(disk), server.base_url, str(out), str(ROOT), sys.executable]
        argv.append(str(out / "read-only"))
        done = subprocess.run(
            ["unshare", "-rm", "sh", "-c", script, *argv],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
            env=cli_env(),
        )
        print(f"driver ran {time.monotonic() - started:.1f} s")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "results.json").read_text(encoding="utf-8"))


def _one_disk_full_line(run: dict[str, Any]) -> str:
    assert run["rc"] == 1, run
    assert "Traceback" not in run["stderr"], run["stderr"]
    errors = [ln for ln in run["stderr"].splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, run["stderr"]
    assert "disk full" in errors[0] and "free space" in errors[0], errors[0]
    return errors[0]


def test_a_store_folder_on_a_read_only_disk_is_one_line(
    disk_full: tuple[Path, dict[str, Any]],
) -> None:
    run = disk_full[1]["read_only"]
    assert run["rc"] == 1 and "Traceback" not in run["stderr"], run
    (line,) = run["stderr"].splitlines()
    assert line.startswith("error: cannot create the folder") and "--db" in line, line
    assert "read-only file system" in line.lower(), line


def test_a_full_disk_before_the_store_exists_says_so_in_one_line(
    disk_full: tuple[Path, dict[str, Any]],
) -> None:
    _, results = disk_full
    line = _one_disk_full_line(results["start_no_store"])
    assert "--resume" not in line  # nothing to resume: run it again


def test_a_disk_that_fills_mid_run_keeps_what_was_stored(
    disk_full: tuple[Path, dict[str, Any]],
) -> None:
    out, results = disk_full
    campaign = results["campaign_id"]
    line = _one_disk_full_line(results["mid_run"])
    assert f"--resume {campaign}" in line, line
    db = out / "after_mid_run" / "evidence.duckdb"
    rows = query(db, "SELECT status, event_count FROM requests ORDER BY started_utc")
    # Everything stored before the disk filled is there and whole; the request in
    # flight is stored whole or not at all (one transaction per request).
    assert [r[0] for r in rows[:FILLED_AFTER]] == ["ok"] * FILLED_AFTER, rows
    assert FILLED_AFTER <= len(rows) <= FILLED_AFTER + 1, rows
    for request_id, events, chunks in query(
        db,
        "SELECT r.request_id, r.event_count, count(c.seq) FROM requests r "
        "LEFT JOIN chunks c USING (request_id) GROUP BY ALL",
    ):
        assert events == chunks, request_id
    (status,) = query(db, "SELECT status FROM campaigns")[0]
    assert status != "complete"


def test_a_full_disk_at_the_start_of_the_next_campaign_loses_nothing(
    disk_full: tuple[Path, dict[str, Any]],
) -> None:
    out, results = disk_full
    _one_disk_full_line(results["start_with_store"])
    before = query(out / "after_mid_run" / "evidence.duckdb", "SELECT request_id FROM requests")
    after = query(out / "after_start" / "evidence.duckdb", "SELECT request_id FROM requests")
    assert sorted(after) == sorted(before)


def test_once_space_is_freed_the_campaign_resumes_and_completes(
    disk_full: tuple[Path, dict[str, Any]],
) -> None:
    out, results = disk_full
    resume = results["resume"]
    assert resume["rc"] == 0, resume
    db = out / "after_resume" / "evidence.duckdb"
    campaign = results["campaign_id"]
    rows = query(
        db, "SELECT repeat, status FROM requests WHERE campaign_id = ? ORDER BY repeat", [campaign]
    )
    assert rows == [(r, "ok") for r in range(1, REPEATS + 1)], rows
    (status,) = query(db, "SELECT status FROM campaigns WHERE campaign_id = ?", [campaign])[0]
    assert status == "complete"
