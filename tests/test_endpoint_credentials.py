"""An endpoint with credentials (`--endpoint http://user:pw@host:port`): every request
the collector sends that server carries them as Basic auth, none carries them in the
Host header or the request line, and nothing stored or printed holds them.

The server here records the head of every request it gets and answers 401 to any
without the credentials it wants, as a server behind Basic auth does.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import duckdb
import httpx
import pytest

from benchmarks.httpx_post import httpx_post
from collector import http1
from collector.apis import GenerationParams
from collector.client import Post, Timeouts, generate
from collector.server import check_endpoint
from collector.session import tokenize
from common.errors import ServerNotHealthy
from tests.support.cli import cli_env, collect_here, query

USER = "evidence-user"
# Percent-encoded in the URL (`%40` is `@`, `%3A` is `:`): the header carries it decoded.
PASSWORD = "pa%40ss%3Aw0rd-1234"
DECODED = "pa@ss:w0rd-1234"
BASIC = "Basic " + base64.b64encode(f"{USER}:{DECODED}".encode()).decode()
API_KEY = "campaign-api-key-0123456789"
BEARER = f"Bearer {API_KEY}"
FAST = Timeouts(connect_s=2.0, stall_s=5.0, request_s=10.0)
PARAMS = GenerationParams(
    prompt="hi", max_tokens=8, temperature=0.0, seed=0, stream=True, model="m"
)
ANSWER = ["Hello", " there", "."]


@dataclass(frozen=True)
class Head:
    """What the server saw of one request before its body."""

    request_line: str
    host: str | None
    authorization: list[str]

    @property
    def path(self) -> str:
        return self.request_line.split(" ")[1].partition("?")[0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, wanted: str) -> None:
        self.wanted = wanted
        self.heads: list[Head] = []
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(BaseHTTPRequestHandler):
    """Just enough of llama-server's OpenAI API: /health, /v1/models, /tokenize and
    chat completions, streamed or not."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _admitted(self) -> bool:
        auth = self.headers.get_all("Authorization") or []
        with self.server.lock:
            self.server.heads.append(Head(self.requestline, self.headers.get("Host"), auth))
        if auth == [self.server.wanted]:
            return True
        self._json(401, {"error": {"code": 401, "message": "Unauthorized"}})
        return False

    def do_GET(self) -> None:
        if not self._admitted():
            return
        if self.path in ("/health", "/v1/models"):
            self._json(200, {"status": "ok"})
        else:
            self._json(404, {"error": {"code": 404, "message": "no route"}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
        if not self._admitted():
            return
        if self.path == "/tokenize":
            self._json(200, {"tokens": list(range(len(str(body.get("content", "")).split())))})
        elif self.path == "/v1/chat/completions" and body.get("stream"):
            self._stream()
        elif self.path == "/v1/chat/completions":
            message = {"role": "assistant", "content": "".join(ANSWER)}
            self._json(
                200, {"choices": [{"index": 0, "message": message, "finish_reason": "stop"}]}
            )
        else:
            self._json(404, {"error": {"code": 404, "message": "no route"}})

    def _stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True  # the body ends when the connection does
        choices = [{"index": 0, "delta": {"content": t}, "finish_reason": None} for t in ANSWER]
        choices.append({"index": 0, "delta": {}, "finish_reason": "stop"})
        for choice in choices:
            self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
        self.wfile.write(b"data: [DONE]\n\n")

    def _json(self, status: int, obj: dict[str, Any]) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


@contextlib.contextmanager
def _serving(wanted: str) -> Iterator[_Server]:
    """The recording server, admitting only requests whose Authorization is `wanted`."""
    server = _Server(wanted)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        thread.join()
        server.server_close()


@pytest.fixture
def basic_server() -> Iterator[_Server]:
    """A server that admits only the endpoint's credentials."""
    with _serving(BASIC) as server:
        yield server


@pytest.fixture
def key_server() -> Iterator[_Server]:
    """A server that admits only the campaign's API key."""
    with _serving(BEARER) as server:
        yield server


def _endpoint(server: _Server, password: str = PASSWORD) -> str:
    return f"http://{USER}:{password}@127.0.0.1:{server.server_address[1]}"


def _assert_heads(server: _Server, authorization: str) -> None:
    """Every request reached the server as `127.0.0.1:PORT`, with `authorization` alone."""
    assert server.heads
    for head in server.heads:
        assert head.host == f"127.0.0.1:{server.server_address[1]}", head
        assert USER not in head.request_line and "@" not in head.request_line, head
        assert head.authorization == [authorization], head


# -- each request the collector sends ----------------------------------------------


@pytest.mark.parametrize("post", [http1.post, httpx_post], ids=["http1", "httpx"])
@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_generation_sends_the_url_credentials_as_basic_auth(
    basic_server: _Server, post: Post, stream: bool
) -> None:
    params = dataclasses.replace(PARAMS, stream=stream)
    result = generate(_endpoint(basic_server), "openai-chat", params, timeouts=FAST, post=post)

    assert (result.status, result.error) == ("ok", None)
    assert result.output_text == "".join(ANSWER)
    _assert_heads(basic_server, BASIC)


def test_the_raw_client_never_puts_credentials_in_the_host_header(basic_server: _Server) -> None:
    request = http1.PostRequest(
        _endpoint(basic_server) + "/tokenize", b'{"content": "a b"}', {}, 2.0, 5.0
    )
    response = http1.post(request)
    try:
        assert response.status == 200
    finally:
        response.close()
    _assert_heads(basic_server, BASIC)


def test_health_and_tokenize_send_the_url_credentials(basic_server: _Server) -> None:
    check_endpoint(_endpoint(basic_server))
    assert tokenize(_endpoint(basic_server), "one two three", headers={}) == 3

    assert {h.path for h in basic_server.heads} == {"/health", "/tokenize"}
    _assert_heads(basic_server, BASIC)


def test_a_user_alone_is_basic_auth_with_an_empty_password(basic_server: _Server) -> None:
    # As httpx (and curl) read `http://user@host`: the user, and an empty password.
    basic_server.wanted = "Basic " + base64.b64encode(f"{USER}:".encode()).decode()
    endpoint = f"http://{USER}@127.0.0.1:{basic_server.server_address[1]}"
    result = generate(endpoint, "openai-chat", PARAMS, timeouts=FAST)

    assert (result.status, result.error) == ("ok", None)
    _assert_heads(basic_server, basic_server.wanted)


def test_the_campaign_api_key_wins_over_url_credentials(key_server: _Server) -> None:
    """A server with both configured gets the campaign's API key, on every request."""
    endpoint, headers = _endpoint(key_server), {"Authorization": BEARER}
    result = generate(endpoint, "openai-chat", PARAMS, timeouts=FAST, headers=headers)
    check_endpoint(endpoint, headers=headers)
    counted = tokenize(endpoint, "one two three", headers=headers)

    assert (result.status, result.error) == ("ok", None)
    assert counted == 3
    assert {h.path for h in key_server.heads} == {"/v1/chat/completions", "/health", "/tokenize"}
    _assert_heads(key_server, BEARER)


def test_an_unanswered_endpoint_is_named_without_its_credentials() -> None:
    dead = f"http://{USER}:{PASSWORD}@127.0.0.1:9"
    with pytest.raises(ServerNotHealthy) as refused:
        check_endpoint(dead)
    assert str(refused.value).startswith("nothing healthy answers at http://127.0.0.1:9 ")
    assert PASSWORD not in str(refused.value) and DECODED not in str(refused.value)


# -- the user's story: `moe-evidence collect --endpoint http://user:pw@...` --------------


def _store_text(db: Path) -> str:
    """Every value of every table of the store, as one text."""
    with duckdb.connect(str(db), read_only=True) as con:
        tables = [
            t
            for (t,) in con.execute(
                "SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'"
            ).fetchall()
        ]
        return "\n".join(repr(con.execute(f'SELECT * FROM "{t}"').fetchall()) for t in tables)


def _files_text(root: Path) -> str:
    return "\n".join(
        p.read_bytes().decode("utf-8", errors="replace")
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".duckdb")
    )


@pytest.mark.parametrize("password", [PASSWORD, "pw"], ids=["long", "short"])
def test_collect_attached_with_credentials(tmp_path: Path, password: str) -> None:
    db = tmp_path / "e.duckdb"
    decoded = httpx.URL(f"http://u:{password}@h").password
    wanted = "Basic " + base64.b64encode(f"{USER}:{decoded}".encode()).decode()
    with _serving(wanted) as server:
        endpoint = _endpoint(server, password)
        flags = ["--endpoint", endpoint, "--model", "m", "--quick", "--tests", "simple-response"]
        done = collect_here(*flags, "--db", str(db))

    assert done.returncode == 0, done.stderr
    # The warm-up, the streamed and the whole request, each answer's /tokenize count.
    paths = [h.path for h in server.heads]
    assert paths.count("/v1/chat/completions") == 3, paths
    assert paths.count("/tokenize") == 2, paths
    assert "/health" in paths, paths
    _assert_heads(server, wanted)
    assert query(db, "SELECT status FROM requests") == [("ok",), ("ok",)]

    (stored,) = query(db, "SELECT endpoint FROM server_runs")
    assert stored == (f"http://(redacted)@127.0.0.1:{server.server_address[1]}",)
    # The credentials in any form, anywhere the collector wrote or printed.
    secrets = [f"{USER}:{password}@", f":{password}@", f":{decoded}@"]
    if len(password) >= 4:
        secrets += [password, str(decoded)]
    for where, text in [
        ("store", _store_text(db)),
        ("files", _files_text(tmp_path)),
        ("stdout", done.stdout),
        ("stderr", done.stderr),
    ]:
        for secret in secrets:
            assert secret not in text, (where, secret)


def test_collect_with_an_api_key_sends_the_key_alone(tmp_path: Path) -> None:
    db, config = tmp_path / "e.duckdb", tmp_path / "c.toml"
    with _serving(BEARER) as server:
        config.write_text(
            "[campaign]\nrepeats = 1\npause_s = 0.0\nidle_window_s = 0.0\n"
            'tests = ["simple-response"]\nnon_streaming = false\n'
            f'[server]\nmode = "attach"\nendpoint = "{_endpoint(server)}"\n'
            'api_key_env = "MOE_TEST_ENDPOINT_KEY"\n'
            '[[models]]\nlabel = "m"\n[[configurations]]\nlabel = "attached"\n',
            encoding="utf-8",
        )
        env = {**cli_env(), "MOE_TEST_ENDPOINT_KEY": API_KEY}
        done = collect_here("--config", str(config), "--db", str(db), env=env)

    assert done.returncode == 0, done.stderr
    assert {h.path for h in server.heads} >= {"/health", "/v1/chat/completions", "/tokenize"}
    _assert_heads(server, BEARER)


@pytest.mark.parametrize(
    "endpoint",
    [f"https://{USER}:{PASSWORD}@127.0.0.1:9", f"http://{USER}:{PASSWORD}@127.0.0.1:port"],
    ids=["https", "bad-port"],
)
@pytest.mark.parametrize("given", ["flag", "config"])
def test_a_refused_endpoint_is_named_without_its_credentials(
    tmp_path: Path, endpoint: str, given: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        f'[server]\nmode = "attach"\nendpoint = "{endpoint}"\n'
        '[[models]]\nlabel = "m"\n[[configurations]]\nlabel = "attached"\n',
        encoding="utf-8",
    )
    source = (
        ["--endpoint", endpoint, "--model", "m"] if given == "flag" else ["--config", str(config)]
    )
    done = collect_here(*source, "--db", str(tmp_path / "e.duckdb"))

    assert done.returncode == 1, done.stderr
    assert (
        "error: " in done.stderr and "http" in done.stderr and "(redacted)@127.0.0.1" in done.stderr
    )
    assert PASSWORD not in done.stderr and DECODED not in done.stderr and USER not in done.stderr
