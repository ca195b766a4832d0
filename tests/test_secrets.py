"""Secrets never reach the store or the site.

The story: a server launched with every kind of secret on its command line (an
API key, a Hugging Face token in both flag forms, anything named like a secret)
and in its environment prints all of it to its log; its outputs and a 401 body
echo the keys, one of them split over several streamed chunks; a second campaign
attaches to a server by a URL with credentials, a third to nothing at such a URL.
Then every column of every table, and every file of the site built from the store
(its Parquet exports included), is searched for each secret: none is there.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from calibration.scenario import Injection, Scenario
from calibration.server import CalibratedServer
from collector.config import CampaignSection, Config, Configuration, ModelEntry, ServerSection
from collector.progress import CampaignProgress
from collector.server import free_port
from common.errors import CampaignFailed
from common.secrets import REDACTED, Secrets, redact_argv, redact_url, secret_name
from evidence.store import open_store
from evidence.writer import (
    as_stored,
    chunk_table,
    insert_arrow,
    insert_row,
    redact_secrets,
    to_json,
)
from tests.support.cli import query
from tests.support.engine import ScenarioPerTest, run_in_process

ROOT = Path(__file__).resolve().parents[1]

API_KEY = "sk-evidence-api-key-0123456789"  # --api-key K; also the api_key_env variable
HF_TOKEN = "hf_EvidenceHubToken0123456789"  # --hf-token=T, echoed split over chunks
HFT_TOKEN = "hf_ShortFlagToken0123456789"  # -hft T
CLIENT_SECRET = "client-secret-0123456789"  # --client-secret S, in a configuration's args
DB_PASSWORD = "db-password-0123456789"  # --db-password=P
ENV_TOKEN = "hf_FromServerEnv0123456789"  # server.env HF_TOKEN
INHERITED_TOKEN = "inherited-token-0123456789"  # the collector's own environment
URL_PASSWORD = "url-password-0123456789"  # attach endpoint http://user:PW@host
DEAD_URL_PASSWORD = "dead-url-password-0123456789"  # an endpoint nothing answers at
SHORT_TOKEN = "x9"  # too short for free text: redacted from argv only

SECRETS = {
    "API_KEY": API_KEY,
    "HF_TOKEN": HF_TOKEN,
    "HFT_TOKEN": HFT_TOKEN,
    "CLIENT_SECRET": CLIENT_SECRET,
    "DB_PASSWORD": DB_PASSWORD,
    "ENV_TOKEN": ENV_TOKEN,
    "INHERITED_TOKEN": INHERITED_TOKEN,
    "URL_PASSWORD": URL_PASSWORD,
    "DEAD_URL_PASSWORD": DEAD_URL_PASSWORD,
}

# A server that prints its argv and its whole environment to its log, as some do,
# then serves the calibrated scenario.
LEAKY_SERVER = """
import argparse, json, os, sys
from calibration.server import main
print("argv:", " ".join(sys.argv), flush=True)
print("argv (json):", json.dumps(sys.argv), flush=True)
for name, value in sorted(os.environ.items()):
    print(f"env: {name}={value}", flush=True)
parser = argparse.ArgumentParser(add_help=False)
parser.add_argument("--port")
parser.add_argument("--scenario")
known, _ = parser.parse_known_args()
raise SystemExit(main(["--port", known.port, "--scenario", known.scenario]))
"""


def _content_event(text: str) -> str:
    delta = {"index": 0, "delta": {"content": text}, "finish_reason": None}
    return "data: " + json.dumps({"choices": [delta]}) + "\n\n"


# The hub token's head is the last word; its tail arrives as two more events.
ECHO_WORDS = (
    "key", API_KEY, "env", ENV_TOKEN, "inherited", INHERITED_TOKEN, "client", CLIENT_SECRET,
    "db", DB_PASSWORD, "short", HFT_TOKEN, "hub", HF_TOKEN[:6],
)  # fmt: skip
ECHO = Scenario(
    tokens=len(ECHO_WORDS),
    words=ECHO_WORDS,
    injections=(
        Injection(len(ECHO_WORDS), _content_event(HF_TOKEN[6:15])),
        Injection(len(ECHO_WORDS), _content_event(HF_TOKEN[15:])),
    ),
)
UNAUTHORIZED = Scenario(http_status=401, error_message=f"Invalid API key {API_KEY} ({HF_TOKEN})")
SCENARIOS = {"simple-response": ECHO, "code-generation": UNAUTHORIZED}


def _campaign(tests: list[str]) -> CampaignSection:
    return CampaignSection(
        name="secrets",
        repeats=1,
        pause_s=0,
        idle_window_s=0,
        tests=tests,
        telemetry_hz=5,
        request_timeout_s=10,
    )


def _launched(tmp: Path, con: duckdb.DuckDBPyConnection) -> str:
    server = tmp / "leaky_server.py"
    server.write_text(LEAKY_SERVER, encoding="utf-8")
    scenario = tmp / "scenario.json"
    scenario.write_text(json.dumps(ECHO.to_dict()), encoding="utf-8")
    port = free_port()
    config = Config(
        campaign=_campaign(["simple-response", "code-generation"]),
        server=ServerSection(
            command=[
                sys.executable,
                str(server),
                "--api-key",
                API_KEY,
                f"--hf-token={HF_TOKEN}",
                "-hft",
                HFT_TOKEN,
                f"--db-password={DB_PASSWORD}",
                "--hf-token",
                SHORT_TOKEN,
                "--api-key-file",
                str(tmp / "key.txt"),
                "--port",
                "{port}",
                "--scenario",
                str(scenario),
            ],
            port=port,
            startup_timeout_s=20,
            api_key_env="MOE_TEST_API_KEY",
            env={"PYTHONPATH": str(ROOT), "HF_TOKEN": ENV_TOKEN, "LLAMA_API_KEY": API_KEY},
        ),
        models=[ModelEntry(label="calibration")],
        configurations=[Configuration(label="plain", args=["--client-secret", CLIENT_SECRET])],
    )
    with ScenarioPerTest(f"http://127.0.0.1:{port}", SCENARIOS) as progress:
        command = ["moe-evidence", "collect", "--config", "c.toml"]
        return run_in_process(con, config, progress, tmp, command=command, api_key=API_KEY)


def _attached(con: duckdb.DuckDBPyConnection, endpoint: str, data_dir: Path) -> str:
    config = Config(
        campaign=_campaign(["simple-response"]).model_copy(
            update={"name": f"Attached: calibration at {endpoint}"}
        ),
        server=ServerSection(mode="attach", endpoint=endpoint),
        models=[ModelEntry(label="calibration")],
        configurations=[Configuration(label="attached")],
    )
    with CampaignProgress() as progress:
        command = ["moe-evidence", "collect", "--endpoint", endpoint, "--model", "calibration"]
        return run_in_process(con, config, progress, data_dir, command=command, api_key=API_KEY)


@pytest.fixture(scope="module")
def secret_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """Three campaigns planted with every kind of secret; the store and their ids."""
    tmp = tmp_path_factory.mktemp("secrets")
    db = tmp / "secrets.duckdb"
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MOE_TEST_API_KEY", API_KEY)
        # The launched server inherits the collector's environment, and prints it.
        env.setenv("SOME_SERVICE_TOKEN", INHERITED_TOKEN)
        with open_store(db) as con:
            ids = [_launched(tmp, con)]
            echo = Scenario(words=("the", "password", "is", URL_PASSWORD), tokens=4)
            with CalibratedServer(echo) as server:
                endpoint = f"http://evidence-user:{URL_PASSWORD}@127.0.0.1:{server.port}"
                ids.append(_attached(con, endpoint, tmp))
            dead = f"http://evidence-user:{DEAD_URL_PASSWORD}@127.0.0.1:{free_port()}"
            with pytest.raises(CampaignFailed) as failed:
                _attached(con, dead, tmp)
            ids.append(failed.value.campaign_id)
    yield db, ids


def _store_text(db: Path) -> dict[str, list[str]]:
    """Every value of every column of every table, as text, by `table.column`."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        columns = con.execute(
            "SELECT c.table_name, c.column_name FROM information_schema.columns c "
            "JOIN information_schema.tables t USING (table_schema, table_name) "
            "WHERE c.table_schema = 'main' AND t.table_type = 'BASE TABLE'"
        ).fetchall()
        out: dict[str, list[str]] = {}
        for table, column in columns:
            rows = con.execute(f'SELECT CAST("{column}" AS VARCHAR) FROM "{table}"').fetchall()
            out[f"{table}.{column}"] = [r[0] for r in rows if r[0] is not None]
        return out
    finally:
        con.close()


def _leaks(texts: dict[str, list[str]]) -> dict[str, list[str]]:
    """Secret name -> the places that hold it."""
    found: dict[str, list[str]] = {}
    for name, secret in SECRETS.items():
        places = [where for where, values in texts.items() if any(secret in v for v in values)]
        if places:
            found[name] = places
    return found


# -- the story ---------------------------------------------------------------------


def test_the_campaigns_ran_and_their_secrets_were_there_to_leak(
    secret_store: tuple[Path, list[str]],
) -> None:
    """The plant took: the server logged, the outputs echoed, the 401 was stored."""
    db, _ = secret_store
    statuses = query(db, "SELECT test_id, stream, status FROM requests ORDER BY ALL")
    assert statuses == [
        ("code-generation", False, "http_error"),
        ("code-generation", True, "http_error"),
        ("simple-response", False, "ok"),
        ("simple-response", False, "ok"),
        ("simple-response", True, "ok"),
        ("simple-response", True, "ok"),
    ]
    (log,) = query(db, "SELECT log_text FROM server_runs WHERE log_text IS NOT NULL")[0]
    assert "argv:" in log and "env: SOME_SERVICE_TOKEN=" in log
    # The hub token arrived over three chunks; each holds only what is left of it.
    rows = query(
        db,
        "SELECT c.text FROM chunks c JOIN requests r USING (request_id) "
        "WHERE r.stream AND r.test_id = 'simple-response' AND c.kind = 'content' "
        "AND r.server_run_id IN (SELECT server_run_id FROM server_runs WHERE mode = 'launch') "
        "ORDER BY c.seq",
    )
    assert [t for (t,) in rows][-3:] == [f" {REDACTED}", "", ""]


def test_no_secret_is_in_any_column_of_any_table(secret_store: tuple[Path, list[str]]) -> None:
    db, _ = secret_store
    leaks = _leaks(_store_text(db))
    assert not leaks, f"secrets stored: {leaks}"


def test_secret_flags_keep_their_place_in_the_stored_command_line(
    secret_store: tuple[Path, list[str]],
) -> None:
    db, _ = secret_store
    (argv,) = query(db, "SELECT argv FROM server_runs WHERE mode = 'launch'")[0]
    stored = json.loads(argv)
    flags = stored[2:12] + stored[-2:]
    assert flags == [
        "--api-key",
        REDACTED,
        f"--hf-token={REDACTED}",
        "-hft",
        REDACTED,
        f"--db-password={REDACTED}",
        "--hf-token",
        REDACTED,  # too short for free text, still hidden here
        "--api-key-file",
        stored[11],  # a path, kept: the file is never read
        "--client-secret",
        REDACTED,
    ]
    assert stored[11].endswith("key.txt")
    # The attached endpoints, the one that answered and the one that did not.
    endpoints = query(db, "SELECT endpoint FROM server_runs WHERE mode = 'attach'")
    assert len(endpoints) == 2
    for (endpoint,) in endpoints:
        assert re.fullmatch(rf"http://{re.escape(REDACTED)}@127\.0\.0\.1:\d+", endpoint)


def test_no_secret_is_in_the_site_or_its_parquet_exports(
    secret_store: tuple[Path, list[str]], tmp_path: Path
) -> None:
    from tests.support.report import build, project

    db, ids = secret_store
    root = project(tmp_path)
    result = build(db, root, campaigns=tuple(ids[:2]))
    assert (result.site_dir / "index.html").is_file()
    files = [p for p in root.rglob("*") if p.is_file()]
    parquet = [p for p in files if p.suffix == ".parquet"]
    assert parquet, "the build exported no Parquet"
    leaks = {
        name: [str(p.relative_to(root)) for p in files if secret.encode() in p.read_bytes()]
        for name, secret in SECRETS.items()
    }
    assert not any(leaks.values()), f"secrets in the site: {leaks}"
    texts = {
        f"{path.name}.{column}": [str(v) for v in values if v is not None]
        for path in parquet
        for column, values in pq.read_table(path).to_pydict().items()
    }
    exported = _leaks(texts)
    assert not exported, f"secrets in the Parquet exports: {exported}"


# -- the redaction, piece by piece -------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "secret"),
    [
        ("--api-key", True),
        ("--hf-token", True),
        ("-hft", True),
        ("--client-secret", True),
        ("--db-password", True),
        ("--apikey", True),
        ("--api-key-file", False),  # a path: kept, never read
        ("--ssl-key-file", False),
        ("--image-max-tokens", False),  # words, not substrings: tokens is no token
        ("--cors-credentials", False),
        ("--keep", False),
        ("--port", False),
        ("HF_TOKEN", True),
        ("LLAMA_API_KEY", True),
        ("TOKENIZERS_PARALLELISM", False),
    ],
)
def test_which_names_hold_a_secret(flag: str, secret: bool) -> None:
    assert secret_name(flag) is secret


def test_argv_keeps_each_flag_and_hides_its_value_in_both_forms() -> None:
    argv = ["srv", "--api-key", "k", "--hf-token=t", "-hft", "h", "--port", "8080"]
    assert redact_argv(argv) == [
        "srv",
        "--api-key",
        REDACTED,
        f"--hf-token={REDACTED}",
        "-hft",
        REDACTED,
        "--port",
        "8080",
    ]


def test_a_secret_flag_without_a_value_does_not_hide_the_next_flag() -> None:
    assert redact_argv(["--db-password", "--port", "1"]) == ["--db-password", "--port", "1"]


def test_a_command_line_inside_one_argument_is_redacted_too() -> None:
    assert redact_argv(["sh", "-c", "srv --api-key abc --port 1"]) == [
        "sh",
        "-c",
        f"srv --api-key {REDACTED} --port 1",
    ]


def test_url_credentials_are_replaced_whole() -> None:
    assert redact_url("see http://me:pw@h:1/x and https://tok@h") == (
        f"see http://{REDACTED}@h:1/x and https://{REDACTED}@h"
    )
    assert redact_url("mail me@example.com") == "mail me@example.com"


def test_secrets_are_found_in_a_config_a_command_and_an_environment() -> None:
    config = {
        "server": {
            "command": ["srv", "--api-key", "argv-key", "--hf-token=hub-token"],
            "endpoint": "http://u:url-pass@h",
            "env": {"LLAMA_API_KEY": "env-key", "PYTHONPATH": "/src"},
            "api_key_env": "MY_KEY",  # a variable's name, not a secret
        },
    }
    found = Secrets.find(config, ["cli", "--endpoint", "https://user-tok@h"], values=["k1", None])
    assert found.values == {"argv-key", "hub-token", "url-pass", "env-key", "user-tok", "k1"}


def test_short_secrets_stay_out_of_free_text() -> None:
    secrets = Secrets(["ab", "long-secret"])
    assert secrets.text("ab long-secret abc") == f"ab {REDACTED} abc"


def test_no_secret_no_change() -> None:
    secrets = Secrets()
    assert not secrets
    pieces = ["a", None, "b"]
    assert secrets.stream(pieces) == pieces
    assert secrets.text("text") == "text"


def test_a_secret_split_over_streamed_pieces_is_caught() -> None:
    secrets = Secrets(["sk-0123456789"])
    pieces = ["key: sk", "-01234", None, "", "56789 done", "sk-0123456789"]
    redacted = secrets.stream(pieces)
    assert redacted == [f"key: {REDACTED}", "", None, "", " done", REDACTED]
    assert "".join(p for p in redacted if p) == secrets.text("".join(p for p in pieces if p))


def test_the_longest_secret_wins_where_two_overlap() -> None:
    secrets = Secrets(["abcd", "abcdefgh"])
    assert secrets.text("xabcdefghx") == f"x{REDACTED}x"


def test_the_writer_redacts_every_row_of_a_connection_it_was_given_secrets_for() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (a VARCHAR, j JSON, n INTEGER)")
    # A number or `true` that matches a secret never breaks the JSON around it.
    redact_secrets(con, Secrets(["s3cr3t-value", "1234", "true"]))
    insert_row(con, "t", {"a": "x s3cr3t-value y", "j": to_json({"k": [1234, True, "true"]})})
    insert_row(con, "t", {"a": "http://u:p@h:1", "j": to_json(["--api-key", "shrt"]), "n": 1234})
    rows = con.execute("SELECT a, j, n FROM t ORDER BY n NULLS FIRST").fetchall()
    assert rows == [
        (f"x {REDACTED} y", json.dumps({"k": [1234, True, REDACTED]}), None),
        (f"http://{REDACTED}@h:1", json.dumps(["--api-key", REDACTED]), 1234),
    ]


def test_the_writer_redacts_chunks_per_request_and_kind() -> None:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE chunks (request_id VARCHAR, seq INTEGER, t_ns BIGINT, text VARCHAR, "
        "kind VARCHAR)"
    )
    redact_secrets(con, Secrets(["s3cr3t-value"]))
    table = chunk_table(
        "r1",
        [1, 2, 3, 4],
        ["s3cr3t", "think", "-value", "s3cr3t-value"],
        ["content", "reasoning", "content", "reasoning"],
    )
    insert_arrow(con, "chunks", table)
    rows = con.execute("SELECT seq, text, kind FROM chunks ORDER BY seq").fetchall()
    assert rows == [
        (0, REDACTED, "content"),
        (1, "think", "reasoning"),
        (2, "", "content"),
        (3, REDACTED, "reasoning"),
    ]


def test_a_value_compared_with_its_stored_copy_is_redacted_the_same_way() -> None:
    config = {"command": ["srv", "--hf-token", "t"], "name": "at s3cr3t-value", "n": 1}
    assert as_stored(config, Secrets(["s3cr3t-value"])) == {
        "command": ["srv", "--hf-token", REDACTED],
        "name": f"at {REDACTED}",
        "n": 1,
    }


def test_a_connection_without_secrets_is_written_as_given() -> None:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE chunks (request_id VARCHAR, seq INTEGER, t_ns BIGINT, text VARCHAR, "
        "kind VARCHAR)"
    )
    insert_arrow(con, "chunks", chunk_table("r1", [1], ["s3cr3t-value"], ["content"]))
    assert con.execute("SELECT text FROM chunks").fetchall() == [("s3cr3t-value",)]
