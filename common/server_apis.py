"""The HTTP APIs the collector drives, declared as plain data.

Each `ServerApi` is one API's name (the config's `server.api`, the CLI's `--api`,
the store's `requests.api`), the path a generation request is POSTed to, and what
its answers carry. Both sides read these declarations: the collector attaches how
to ask and how to read each answer (`collector.apis`), the metrics ask which APIs
never say why a generation ended (`evidence.metrics`), the calibration server
serves each one's path. Nothing outside those adapters compares an API's name.

Adding an API: declare it here, give it an adapter in `collector.apis` (and, to
test it end to end, its shapes in `calibration.shapes`), and a test.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ServerApi:
    """One API: where to ask, and what its answers say."""

    name: str
    path: str  # a generation request is POSTed here
    # Its answers say why the generation ended (`finish_reason`); an API that never
    # does leaves the metrics to infer it from the token count.
    reports_finish_reason: bool = True
    reports_usage: bool = True  # an OpenAI `usage` object (prompt and completion tokens)
    reports_timings: bool = True  # llama-server's `timings` object
    # The server behind it answers llama-server's POST /tokenize (asked for exact
    # output counts; an answer other than 200 falls back to llama-tokenize anyway).
    tokenize: bool = True


SERVER_APIS: tuple[ServerApi, ...] = (
    ServerApi("openai-chat", "/v1/chat/completions"),  # llama-server, Shimmy
    ServerApi("openai-completions", "/v1/completions"),  # llama-server
    # Shimmy's native API: bare token text, no finish reason, no counts.
    ServerApi(
        "shimmy",
        "/api/generate",
        reports_finish_reason=False,
        reports_usage=False,
        reports_timings=False,
        tokenize=False,
    ),
    # llama-server's native completion: `stop` and `stop_type`, `timings`, no usage.
    ServerApi("llama-completion", "/completion", reports_usage=False),
)

API_NAMES: tuple[str, ...] = tuple(api.name for api in SERVER_APIS)
DEFAULT_API = "openai-chat"
_BY_NAME = {api.name: api for api in SERVER_APIS}


def server_api(name: str) -> ServerApi:
    """The declaration of the API called `name`; ValueError names the known ones."""
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(unknown_api()) from None


def unknown_api() -> str:
    """What to say of a name no declaration has (pydantic's words for a wrong choice)."""
    quoted = [repr(n) for n in API_NAMES]
    choices = quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"
    return f"Input should be {choices}"


def api_in_sql(column: str, apis: tuple[ServerApi, ...]) -> str:
    """A SQL condition: `column` names one of `apis` (FALSE when there are none)."""
    if not apis:
        return "FALSE"
    names = ", ".join("'" + api.name.replace("'", "''") + "'" for api in apis)
    return f"{column} IN ({names})"


def without_finish_reason(column: str) -> str:
    """SQL: `column` names an API that never gives a finish reason."""
    return api_in_sql(column, tuple(a for a in SERVER_APIS if not a.reports_finish_reason))
