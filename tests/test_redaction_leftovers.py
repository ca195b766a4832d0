"""Secrets outside the store: the logs kept on disk, the terminal, keys from a key file.

The story: `moe-evidence collect` launches a server that prints its argv, its API
keys (two given as llama-server's comma-separated `--api-key A,B`, one only in an
`--api-key-file`) and its environment to its log, on an RPC device that prints its
own environment; every answer is a 401 whose plain-text body echoes a key, with
Rich markup and a terminal escape sequence in it. The store, every file under
data/logs/, and everything the command printed are then searched for each key.
"""

from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

from calibration.scenario import Scenario
from collector.progress import CampaignProgress
from common.secrets import REDACTED, Secrets, redact_argv
from tests.support.cli import ROOT, RPC_DEVICE_LISTEN, cli_env, collect, query, rpc_campaign_toml
from tests.support.gguf import f32, write_gguf

KEY_A = "sk-list-key-a-0123456789"  # --api-key A,B: each accepted alone
KEY_B = "sk-list-key-b-0123456789"
FILE_KEY = "sk-only-in-a-key-file-0123456789"  # --api-key-file F, nowhere else
CRLF_KEY = "sk-crlf-line-key-0123456789"  # a key file written on Windows
INHERITED = "inherited-device-token-0123456789"  # the collector's environment
SECRETS = {
    "KEY_A": KEY_A,
    "KEY_B": KEY_B,
    "FILE_KEY": FILE_KEY,
    "CRLF_KEY": CRLF_KEY,
    "INHERITED": INHERITED,
}

LEAKY_SERVER = """
import argparse, os, sys
from calibration.server import main
parser = argparse.ArgumentParser(add_help=False)
for flag in ("--port", "--scenario", "--api-key", "--api-key-file"):
    parser.add_argument(flag)
known, _ = parser.parse_known_args()
print("argv:", " ".join(sys.argv), flush=True)
with open(known.api_key_file, encoding="utf-8", newline="") as keys:
    lines = keys.read().split("\\n")
for key in known.api_key.split(",") + [k for k in lines if k and not k.startswith("#")]:
    print("accepting API key", key, flush=True)
for name, value in sorted(os.environ.items()):
    print(f"env: {name}={value}", flush=True)
raise SystemExit(main(["--port", known.port, "--scenario", known.scenario]))
"""

# An RPC device stand-in: prints its environment, then listens until stopped.
LEAKY_DEVICE = (
    """
import os, socket, sys, time
for name, value in sorted(os.environ.items()):
    print(f"env: {name}={value}", flush=True)
"""
    + RPC_DEVICE_LISTEN
)

# The error is `HTTP 401: <the body's first 300 characters>`, and a failed request's
# progress summary is that error cut at 100: the key starts at 92 of the error, so
# the summary keeps 8 characters of it; again at 292 of the body, so the stored
# error keeps 8 of that one.
_BODY_HEAD = "Unauthorized: [/bold] \x1b]0;pwned\x07 \u202eevil "
_BODY = _BODY_HEAD + "x" * (92 - len("HTTP 401: ") - len(_BODY_HEAD)) + FILE_KEY
_BODY += " " + "y" * (292 - len(_BODY) - 1) + FILE_KEY + " and more"
UNAUTHORIZED = (
    "HTTP/1.1 401 Unauthorized\r\nContent-Type: text/plain; charset=utf-8\r\n"
    f"Content-Length: {len(_BODY.encode())}\r\nConnection: close\r\n\r\n{_BODY}"
)


@pytest.fixture(scope="module")
def leaky_campaign(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """The campaign run once: its store, and what the command printed."""
    tmp = tmp_path_factory.mktemp("leftovers")
    (tmp / "server.py").write_text(LEAKY_SERVER, encoding="utf-8")
    (tmp / "device.py").write_text(LEAKY_DEVICE, encoding="utf-8")
    key_file = tmp / "keys.txt"
    key_file.write_bytes(f"# our keys\n{FILE_KEY}\n{CRLF_KEY}\r\n".encode())
    scenario = tmp / "scenario.json"
    scenario.write_text(
        json.dumps(Scenario(verbatim_response=UNAUTHORIZED).to_dict()),
        encoding="utf-8",
    )
    model = write_gguf(tmp / "m.gguf", "llama", {"block_count": 1}, [("w", f32(4, 4), None)])
    server = [sys.executable, str(tmp / "server.py"), "--api-key", f"{KEY_A},{KEY_B}"]
    server += ["--api-key-file", str(key_file), "--port", "{port}", "--scenario", str(scenario)]
    device = [sys.executable, "-u", str(tmp / "device.py"), "--port", "{port}"]
    config = rpc_campaign_toml(tmp, model, server, device, {"PYTHONPATH": str(ROOT)})
    db = tmp / "data" / "evidence.duckdb"
    env = {**cli_env(), "SOME_SERVICE_TOKEN": INHERITED}
    done = collect("--config", str(config), "--db", str(db), timeout=180, env=env)
    assert "Traceback" not in done.stderr, done.stderr
    return db, done.stdout, done.stderr


def _leaks(texts: dict[str, str]) -> dict[str, list[str]]:
    return {
        name: [where for where, text in texts.items() if secret in text]
        for name, secret in SECRETS.items()
        if any(secret in text for text in texts.values())
    }


def test_the_campaign_ran_and_failed_on_its_401s(leaky_campaign: tuple[Path, str, str]) -> None:
    db, _, stderr = leaky_campaign
    assert query(db, "SELECT status, http_status FROM requests") == [("http_error", 401)], stderr
    (log,) = query(db, "SELECT log_text FROM server_runs")[0]
    assert log.count("accepting API key") == 4 and "env: SOME_SERVICE_TOKEN=" in log
    assert query(db, "SELECT status FROM campaigns") == [("failed",)]


def test_no_key_is_in_the_store(leaky_campaign: tuple[Path, str, str]) -> None:
    """The key file's keys, and each key of a comma-separated list, are known to the
    redactor although no command line or variable shows them whole."""
    db, _, _ = leaky_campaign
    texts = {}
    for table, column in query(
        db,
        "SELECT table_name, column_name FROM information_schema.columns "
        "WHERE table_schema = 'main' AND data_type = 'VARCHAR'",
    ):
        rows = query(db, f'SELECT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL')
        texts[f"{table}.{column}"] = "\n".join(r[0] for r in rows)
    assert not _leaks(texts)
    # The error quotes the body's start, cut inside the second key: its head is hidden.
    (error,) = query(db, "SELECT error FROM requests")[0]
    assert error.endswith(REDACTED) and FILE_KEY[:8] not in error, error


def test_no_key_is_in_the_logs_kept_on_disk(leaky_campaign: tuple[Path, str, str]) -> None:
    db, _, _ = leaky_campaign
    logs = sorted((db.parent / "logs").glob("*.log"))
    assert [p.name.split(".", 1)[1] for p in logs] == ["log", "rpc0.log"]
    texts = {p.name: p.read_text(encoding="utf-8") for p in logs}
    assert not _leaks(texts)
    server_log = next(t for name, t in texts.items() if name.endswith(".log") and "rpc" not in name)
    assert f"accepting API key {REDACTED}" in server_log  # redacted, not emptied
    assert "listening on" in server_log
    device_log = next(t for name, t in texts.items() if "rpc0" in name)
    assert f"env: SOME_SERVICE_TOKEN={REDACTED}" in device_log


def test_nothing_printed_holds_a_key(leaky_campaign: tuple[Path, str, str]) -> None:
    _, stdout, stderr = leaky_campaign
    assert not _leaks({"stdout": stdout, "stderr": stderr})
    # The progress line cut the body inside the key: what is left of it is hidden too.
    assert FILE_KEY[:8] not in stderr
    line = next(ln for ln in stderr.splitlines() if "HTTP 401" in ln)
    assert line.endswith(REDACTED), line


def test_what_a_server_sent_is_shown_not_obeyed(leaky_campaign: tuple[Path, str, str]) -> None:
    _, _, stderr = leaky_campaign
    assert "\x1b" not in stderr and "\u202e" not in stderr
    assert "\\x1b]0;pwned\\x07" in stderr and "\\u202eevil" in stderr


def test_a_terminal_shows_markup_and_keys_from_a_server_as_plain_redacted_text() -> None:
    """On a terminal the display is Rich: a `[/bold]` in an error body raised MarkupError
    and stopped the campaign."""
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=400, color_system=None)
    with CampaignProgress(console, secrets=Secrets([FILE_KEY])) as progress:
        progress.server("model [/bold]", f"cfg {FILE_KEY}", f"note \x1b[2J {FILE_KEY}")
        progress.request("simple-response", 1, 1, True)
        progress.finished("http_error", f"HTTP 401: [/bold] {FILE_KEY[:9]}")
        progress.message(f"[red]restarting[/] after {FILE_KEY}")
    shown = out.getvalue()
    assert FILE_KEY not in shown and FILE_KEY[:9] not in shown
    assert "[/bold]" in shown and "[red]restarting[/]" in shown
    assert "\\x1b[2J" in shown


def test_a_log_that_cannot_be_rewritten_is_kept_and_said(tmp_path: Path) -> None:
    """Redaction writes a copy and swaps it in: where the copy cannot be written (a
    full disk, here a folder in the way), the log stays whole and a line says so."""
    from collector.server import redact_logs

    log = tmp_path / "run.log"
    log.write_bytes(f"key {FILE_KEY}\n\xff raw bytes kept\n".encode("latin-1"))
    said: list[str] = []
    redact_logs(Secrets([FILE_KEY]), [log, None, tmp_path / "never-written.log"], said.append)
    assert log.read_bytes() == f"key {REDACTED}\n\xff raw bytes kept\n".encode("latin-1")
    log.write_text(f"key {FILE_KEY}\n", encoding="utf-8")
    (tmp_path / "run.log.redacting").mkdir()
    redact_logs(Secrets([FILE_KEY]), [log], said.append)
    assert log.read_text(encoding="utf-8") == f"key {FILE_KEY}\n"
    assert len(said) == 1 and "could not redact" in said[0] and str(log) in said[0]


def test_key_lists_and_key_files_are_read_for_their_keys(tmp_path: Path) -> None:
    keys = tmp_path / "keys.txt"
    keys.write_bytes(f"#{KEY_B}\n\n{FILE_KEY}\r\n".encode())
    for document in (
        ["llama-server", "--api-key", f"{KEY_A},{KEY_B}", f"--api-key-file={keys}"],
        ["sh", "-c", f"llama-server --api-key {KEY_A},{KEY_B} --api-key-file {keys}"],
        {"LLAMA_API_KEY": f"{KEY_A},{KEY_B}", "LLAMA_ARG_API_KEY_FILE": str(keys)},
    ):
        secrets = Secrets.find(document)
        for key in (KEY_A, KEY_B, FILE_KEY):
            assert secrets.text(f"a {key} b") == f"a {REDACTED} b", (document, key)
    # The path itself is kept where the command line is stored.
    assert redact_argv(["s", "--api-key-file", str(keys)]) == ["s", "--api-key-file", str(keys)]
