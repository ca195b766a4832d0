"""Campaign configuration: a TOML file, validated at the edge.

Unknown keys and wrong types are errors that name the key (`models[0].path`),
so a typo never silently falls back to a default. The embedded default (no
file) is built by `collector.defaults` from the same types.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from collector.apis import ApiName
from collector.protocol import TEST_IDS
from common.controls import control_problem
from common.errors import ConfigError
from common.server_apis import DEFAULT_API
from common.sizes import parse_size
from common.thresholds import DEFAULT_THRESHOLDS


class _Strict(BaseModel):
    # No inf or nan anywhere: TOML has both, and an infinite timeout or pause
    # would hang a campaign (or crash the socket layer) instead of being refused.
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


def _shown_text(text: str) -> str:
    problem = control_problem(text)
    if problem:
        raise ValueError(problem)
    return text


# The user's names for things, printed on the console and drawn in pages and charts: no
# control characters (a newline would forge a console line, a NUL aborted the chart
# renderer, U+202E reorders what follows it; common.controls).
Label = Annotated[str, AfterValidator(_shown_text)]


def check_test_ids(test_ids: list[str] | None) -> list[str] | None:
    """`test_ids` if each is a protocol test; None means the whole protocol.

    An empty list is refused: it would run a campaign of nothing that still
    counts as complete."""
    if test_ids is None:
        return None
    if not test_ids:
        raise ValueError(
            "no test ids: name at least one test, or leave tests out for the whole protocol"
        )
    for test_id in test_ids:
        if test_id not in TEST_IDS:
            raise ValueError(f"unknown test {test_id!r}; known: {', '.join(TEST_IDS)}")
    return test_ids


def endpoint_problem(url: str) -> str | None:
    """What is wrong with `url` as the base URL of a server to attach to, or None.

    The collector's streaming client speaks plain HTTP/1.1 (collector.http1),
    so only `http://HOST[:PORT][/prefix]` can work; anything else would pass
    the health check (httpx speaks more) and then fail every request."""
    control = control_problem(url)
    if control:
        # urlsplit drops tab and newline silently: the address would pass, and print
        # (and be stored) with them.
        return f"{url!r} {control}"
    parts = urlsplit(url)
    if parts.scheme == "https":
        return (
            f"{url}: https is not supported (the collector speaks plain HTTP/1.1 to the "
            f"server); give the server's http:// address"
        )
    if "://" not in url:
        return f"{url!r} has no scheme; write http://{url}"
    try:
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return f"{url}: the port is not a number between 0 and 65535"
    if parts.scheme != "http" or not parts.hostname:
        return f"{url} is not an http://HOST:PORT address; write it as http://HOST:PORT"
    return None


class CampaignSection(_Strict):
    name: Label = "MoE CPU offload evidence"
    release: Label | None = None
    repeats: int = Field(3, ge=1)
    temperature: float = Field(0.3, ge=0.0)
    seed: int | None = 42
    pause_s: float = Field(5.0, ge=0.0)
    non_streaming: bool = True  # one non-streamed run per test and configuration
    warmup: bool = True  # one unrecorded request after each server start
    tests: list[str] | None = None  # a subset of the protocol, in protocol order
    max_tokens_cap: int | None = Field(None, ge=1)  # the quick profile caps budgets
    # Each request's deadline is its token budget at this rate, plus the stall timeout
    # for the prompt and first byte, plus a per-request model load where the server
    # does one (collector.client.request_deadline). The protocol expects local
    # hardware at 1-3 tokens/s: set it below the slowest rate a server may run at.
    min_tokens_per_s: float = Field(1.0, gt=0)
    # An optional cap on that deadline (None: none); a request it cuts names it.
    request_timeout_s: float | None = Field(None, gt=0)
    # A stream with no byte for this long has stalled. Not applied to a non-streamed
    # request: it is silent until its answer is complete.
    stall_timeout_s: float = Field(120.0, gt=0)
    telemetry_hz: float = Field(10.0, gt=0, le=100)
    # Idle telemetry after the server is ready and before the warm-up: the
    # "memory after load" figure is the median over this window.
    idle_window_s: float = Field(1.0, ge=0)
    tokenize: bool = True  # ask the server's /tokenize for tokenizer-accurate counts
    # llama-server reuses a cached prompt prefix across requests, which would make
    # repeats 2..N of a test faster to first token than repeat 1. False sends
    # `cache_prompt: false` so every request processes its whole prompt; None
    # sends nothing (for servers that reject unknown fields).
    cache_prompt: bool | None = False
    max_restarts: int = Field(3, ge=0)  # server crashes tolerated per configuration

    @field_validator("tests")
    @classmethod
    def _known_tests(cls, tests: list[str] | None) -> list[str] | None:
        return check_test_ids(tests)


class ModelEntry(_Strict):
    label: Label
    path: Path | None = None  # required when the tool launches the server
    name: Label | None = None  # the `model` field sent in requests (default: label)
    expected_vram_saved_pct: float | None = Field(None, ge=0, le=100)

    @property
    def request_name(self) -> str:
        return self.name or self.label


class ServerSection(_Strict):
    mode: Literal["launch", "attach"] = "launch"
    command: list[str] | None = None  # placeholders: see collector.defaults.PLACEHOLDERS
    endpoint: str | None = None  # attach mode
    api: ApiName = DEFAULT_API
    host: str = "127.0.0.1"
    port: int | None = Field(None, ge=1, le=65535)  # None: a free port per start
    health_path: str = "/health"
    startup_timeout_s: float = Field(600.0, gt=0)
    api_key_env: str | None = None  # the key is read from this variable, never stored
    env: dict[str, str] = Field(default_factory=dict)

    @field_validator("endpoint")
    @classmethod
    def _http_endpoint(cls, endpoint: str | None) -> str | None:
        problem = endpoint_problem(endpoint) if endpoint is not None else None
        if problem:
            raise ValueError(problem)
        return endpoint

    @model_validator(mode="after")
    def _mode_fields(self) -> ServerSection:
        if self.mode == "launch" and not self.command:
            raise ValueError("mode 'launch' needs a command (a list of strings)")
        if self.mode == "attach" and not self.endpoint:
            raise ValueError("mode 'attach' needs an endpoint URL")
        return self


class DeviceSection(_Strict):
    """The device the server offloads to, when it is not a GPU the server finds itself.

    `rpc`: llama.cpp's RPC device. `launch` fresh `ggml-rpc-server` processes are
    started on `host` for every server run (free ports, `threads` each) and stopped
    with it; `endpoints` names rpc-servers that already run elsewhere (a model spread
    over several machines). The server command gets `--rpc HOST:PORT,...` (or its
    `{rpc}` placeholder is filled). Only the processes we launch can be measured.
    """

    kind: Literal["none", "rpc"] = "none"
    launch: int = Field(1, ge=0, le=16)
    endpoints: list[str] = Field(default_factory=list)
    host: str = "127.0.0.1"
    # None: half the logical cores (at least 1). Recorded with every server run.
    threads: int | None = Field(None, ge=1)
    # The rpc-server command; None: the embedded engine's ggml-rpc-server.
    # Placeholders: {rpc_server}, {host}, {port}, {threads}.
    command: list[str] | None = None
    startup_timeout_s: float = Field(30.0, gt=0)
    # The device's memory in bytes ("160MiB" in a file): each launched rpc-server is
    # held to it (collector.device_limit), as a GPU of that size would be. None: the
    # device takes what the host gives it.
    memory: int | None = Field(None, ge=1)

    @field_validator("memory", mode="before")
    @classmethod
    def _size(cls, value: object) -> object:
        return parse_size(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _has_device(self) -> DeviceSection:
        if self.kind == "rpc" and self.launch == 0 and not self.endpoints:
            raise ValueError("kind 'rpc' needs launch >= 1 or at least one endpoint")
        if self.memory is not None and self.kind != "rpc":
            raise ValueError(
                "memory is enforced on llama.cpp's RPC device only (kind = 'rpc'); a GPU's "
                "memory is its own, read from NVML at each server start"
            )
        if self.memory is not None and (self.endpoints or self.launch == 0):
            raise ValueError(
                "memory can be enforced only on rpc-servers this tool launches; remove "
                "endpoints (they run elsewhere, as they are) or remove memory"
            )
        for endpoint in self.endpoints:
            host, sep, port = endpoint.rpartition(":")
            if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"endpoint {endpoint!r} is not HOST:PORT")
        return self


class Configuration(_Strict):
    label: Label
    args: list[str] = Field(default_factory=list)
    # Recorded with every server run: None = no offload flag, -1 = --cpu-moe (all
    # layers), K = --n-cpu-moe K. "auto": the K `moe-evidence advise` recommends for the
    # device memory in force (collector.advisor.auto_k), filled into the args' "{k}"
    # (no args: `--n-cpu-moe K`) when the server starts, and recorded as that K.
    n_cpu_moe: int | Literal["auto"] | None = None


class SweepSection(_Strict):
    n_cpu_moe: list[int] = Field(min_length=1)
    # Protocol tests run at each K (None: the campaign's tests; []: none, probes only).
    tests: list[str] | None = None
    repeats: int = Field(1, ge=1)
    args: list[str] = Field(default_factory=lambda: ["--n-cpu-moe", "{k}"])
    # Speed probes at each K (collector.probes): one per prompt length in tokens, each
    # answering `decode_tokens` tokens, so prefill is measured at every length and
    # decode after each prompt. [] runs none.
    prompt_tokens: list[int] = Field(default_factory=list)
    decode_tokens: int = Field(64, ge=2)

    @field_validator("tests")
    @classmethod
    def _known_tests(cls, tests: list[str] | None) -> list[str] | None:
        return tests if tests == [] else check_test_ids(tests)

    @field_validator("prompt_tokens")
    @classmethod
    def _lengths(cls, lengths: list[int]) -> list[int]:
        if any(n < 1 for n in lengths) or len(set(lengths)) != len(lengths):
            raise ValueError(
                f"prompt_tokens {lengths}: give distinct prompt lengths of at least 1 token"
            )
        return sorted(lengths)

    @model_validator(mode="after")
    def _runs_something(self) -> SweepSection:
        if self.tests == [] and not self.prompt_tokens:
            raise ValueError(
                "the sweep runs nothing: name tests, or give prompt_tokens for speed probes"
            )
        return self


class Config(_Strict):
    campaign: CampaignSection = Field(default_factory=CampaignSection)
    server: ServerSection
    models: list[ModelEntry] = Field(min_length=1)
    configurations: list[Configuration] = Field(
        default_factory=lambda: [
            Configuration(label="baseline"),
            Configuration(label="cpu-moe", args=["--cpu-moe"], n_cpu_moe=-1),
        ]
    )
    sweep: SweepSection | None = None
    device: DeviceSection = Field(default_factory=DeviceSection)
    gates: dict[str, float] = Field(default_factory=dict)  # common/gate_thresholds.toml

    @field_validator("configurations")
    @classmethod
    def _some_configuration(cls, configurations: list[Configuration]) -> list[Configuration]:
        # An empty list would run nothing and still finish as a complete campaign.
        if not configurations:
            raise ValueError(
                "no configurations: give at least one [[configurations]] (a label), or "
                "leave the key out for baseline and cpu-moe"
            )
        return configurations

    @model_validator(mode="after")
    def _flags_need_a_launch(self) -> Config:
        # Attached, the tool does not start the server, so it cannot pass a
        # configuration's flags: every configuration would measure the same server,
        # recorded as offload settings it never had.
        if self.server.mode != "attach":
            return self
        if self.sweep is not None:
            raise ValueError(
                "sweep: a --n-cpu-moe sweep needs a server the tool launches, and mode is "
                "'attach'; remove [sweep], or give [server] a command to launch"
            )
        for i, configuration in enumerate(self.configurations):
            if configuration.n_cpu_moe == "auto":
                raise ValueError(
                    f'configurations[{i}].n_cpu_moe: "auto" chooses the K a launched server '
                    f"gets, and mode is 'attach'; give the K the server runs with"
                )
            if configuration.args:
                raise ValueError(
                    f"configurations[{i}].args: {configuration.args} cannot reach a server "
                    f"in mode 'attach'; start that server with them yourself and give one "
                    f"[[configurations]] with only its label (and n_cpu_moe) per server"
                )
        return self

    @model_validator(mode="after")
    def _known_gates(self) -> Config:
        for key in self.gates:
            if key not in DEFAULT_THRESHOLDS:
                raise ValueError(
                    f"gates: unknown threshold {key!r}; known: {', '.join(DEFAULT_THRESHOLDS)}"
                )
        return self

    @model_validator(mode="after")
    def _unique_labels(self) -> Config:
        for what, labels in (
            ("models", [m.label for m in self.models]),
            ("configurations", [c.label for c in self.configurations]),
        ):
            dupes = sorted({x for x in labels if labels.count(x) > 1})
            if dupes:
                raise ValueError(f"{what}: duplicate label {dupes[0]!r}")
        return self


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def validation_message(source: str, exc: ValidationError) -> str:
    """One line naming the first bad key, e.g. `run.toml: models[0].path: ...`.

    A check that spans keys (raised at the top level) names its keys itself."""
    errors = exc.errors()
    first = errors[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and "[" in p))
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key (check the spelling; see configs/ for examples)"
    elif first["type"] == "finite_number":
        msg = "must be a finite number (inf and nan are not allowed)"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    where = f"{_location(loc)}: " if loc else ""
    return f"{source}: {where}{msg}{more}"


def load_config(path: Path) -> Config:
    """Read and validate a TOML config file."""
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file {path} does not exist; check the path") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from exc
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(validation_message(str(path), exc)) from exc
    return _resolve_paths(config, path.parent)


def _resolve_paths(config: Config, base: Path) -> Config:
    # Model paths in a config file are relative to the file, not to the cwd.
    models = [
        m.model_copy(
            update={"path": (base / m.path) if m.path and not m.path.is_absolute() else m.path}
        )
        for m in config.models
    ]
    return config.model_copy(update={"models": models})
