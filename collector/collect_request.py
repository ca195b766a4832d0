"""What `collect` is asked to do, as one typed object, and the config it asks for.

The command line builds one `CollectRequest` from its flags (moe_evidence.cli);
nothing below it reads an `argparse.Namespace`. `build_config` is the only place
that turns a request into a `Config`: the embedded default, a config file or
attach mode, then the flags on top.

Which fields define the campaign is declared here, on each field (`DEFINES`):
`--resume` takes an unset one from the stored campaign, and refuses one given
with a value the campaign did not run with (collector.resume).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from collector import device_limit
from collector.config import (
    CampaignSection,
    Config,
    Configuration,
    DeviceSection,
    ModelEntry,
    ServerSection,
    check_test_ids,
    endpoint_problem,
    load_config,
    validation_message,
)
from collector.defaults import DeviceKind, embedded_config, quick_profile
from common.controls import control_problem
from common.errors import ConfigError
from common.secrets import redact_url
from common.server_apis import DEFAULT_API
from common.sizes import parse_size

# The metadata of a field that defines the campaign (all but where it is stored, and
# --resume). Its default means unset: None, or False for a switch.
DEFINES = {"defines_campaign": True}


@dataclass(frozen=True)
class CollectRequest:
    """One `moe-evidence collect`: each field is the flag of the same name (`--no-sweep`
    is `no_sweep`), as typed; `command` is the command line, stored with a campaign."""

    command: tuple[str, ...]
    db: Path | None = None
    # `--resume` alone is True (the latest unfinished campaign); `--resume ID` the id.
    resume: str | bool = False
    config: Path | None = field(default=None, metadata=DEFINES)
    endpoint: str | None = field(default=None, metadata=DEFINES)
    api: str | None = field(default=None, metadata=DEFINES)
    device: DeviceKind | None = field(default=None, metadata=DEFINES)
    device_memory: str | None = field(default=None, metadata=DEFINES)
    model: str | None = field(default=None, metadata=DEFINES)
    label: str | None = field(default=None, metadata=DEFINES)
    quick: bool = field(default=False, metadata=DEFINES)
    repeats: int | None = field(default=None, metadata=DEFINES)
    pause: float | None = field(default=None, metadata=DEFINES)
    tests: str | None = field(default=None, metadata=DEFINES)
    release: str | None = field(default=None, metadata=DEFINES)
    no_non_streaming: bool = field(default=False, metadata=DEFINES)
    no_sweep: bool = field(default=False, metadata=DEFINES)

    @classmethod
    def definition_fields(cls) -> tuple[str, ...]:
        """The names of the fields that define the campaign."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.metadata.get("defines_campaign"))

    @classmethod
    def flag_fields(cls) -> tuple[str, ...]:
        """The fields a `collect` flag sets: all but the command line itself."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "command")

    def defines_campaign(self) -> bool:
        """Whether any flag that defines the campaign was given (else `--resume` reruns
        the stored definition)."""
        # Identity, not equality: `0 == False`, and `--pause 0` is a value given.
        return any(
            getattr(self, name) is not None and getattr(self, name) is not False
            for name in self.definition_fields()
        )


# The embedded default campaign's profiles (no --config, no --endpoint).
EMBEDDED_PROFILES = ("default", "quick")


def _check_label_flags(request: CollectRequest) -> None:
    """The flags that name things, refused (naming the flag) where they hold a control
    character, as the same keys are in a config file (collector.config.Label)."""
    for flag, value in (
        ("--model", request.model),
        ("--label", request.label),
        ("--release", request.release),
    ):
        problem = control_problem(value) if value else None
        if problem:
            raise ConfigError(f"{flag}: {problem}")


def _attach_config(request: CollectRequest) -> Config:
    if not request.model:
        raise ConfigError("--endpoint needs --model NAME (the model name the server knows)")
    assert request.endpoint is not None
    problem = endpoint_problem(request.endpoint)
    if problem:
        raise ConfigError(f"--endpoint {problem}")
    try:
        return Config(
            # Named without the endpoint's credentials: the store redacts a bare URL's
            # structurally, but only a secret long enough for free text in a name.
            campaign=CampaignSection(
                name=f"Attached: {request.model} at {redact_url(request.endpoint)}"
            ),
            server=ServerSection(
                mode="attach", endpoint=request.endpoint, api=request.api or DEFAULT_API
            ),
            models=[ModelEntry(label=request.model, name=request.model)],
            configurations=[Configuration(label=request.label or "attached")],
        )
    except ValidationError as exc:
        raise ConfigError(validation_message("--endpoint", exc)) from exc


def _with_device(config: Config, kind: DeviceKind | None, memory: str | None) -> Config:
    """`config` with the device the flags name: its kind, and the memory it is held to."""
    updates: dict[str, Any] = {}
    if kind is not None:
        updates["kind"] = kind
    if memory is not None:
        try:
            updates["memory"] = parse_size(memory)
        except ValueError as exc:
            raise ConfigError(f"--device-memory: {exc}") from exc
        unsupported = device_limit.supported()
        if unsupported:
            raise ConfigError(f"--device-memory: {unsupported}")
    try:
        device = DeviceSection.model_validate({**config.device.model_dump(), **updates})
    except ValidationError as exc:
        raise ConfigError(validation_message("--device-memory", exc)) from exc
    return config.model_copy(update={"device": device})


def _test_ids(flag: str) -> list[str]:
    """`--tests a,b`: the ids, each a protocol test (one line naming a bad one)."""
    try:
        ids = check_test_ids([t.strip() for t in flag.split(",") if t.strip()])
    except ValueError as exc:
        raise ConfigError(f"--tests: {exc}") from exc
    assert ids is not None
    return ids


def build_config(request: CollectRequest) -> tuple[Config, str]:
    """The config the flags ask for, and its profile name."""
    _check_label_flags(request)
    device = request.device
    if request.config is not None:
        config, profile = load_config(request.config), "config"
    elif request.endpoint is not None:
        config, profile = _attach_config(request), "attach"
    else:
        config, profile = embedded_config(device=device or "rpc"), "default"
        device = None  # applied
    memory = request.device_memory
    if device is not None or memory is not None:
        config = _with_device(config, device, memory)
    if request.quick:
        # The profile first, then the flags typed with it: `--quick --repeats 3` is
        # the smoke profile with three repeats (the --quick help says so).
        config = quick_profile(config)
        profile = "quick" if profile == "default" else f"{profile}-quick"
    updates: dict[str, Any] = {}
    if request.repeats is not None:
        if request.repeats < 1:
            raise ConfigError("--repeats must be at least 1")
        updates["repeats"] = request.repeats
    if request.pause is not None:
        if not math.isfinite(request.pause):
            raise ConfigError("--pause must be a finite number of seconds (0 for none)")
        updates["pause_s"] = max(0.0, request.pause)
    if request.tests is not None:
        updates["tests"] = _test_ids(request.tests)
    if request.release:
        updates["release"] = request.release
    if request.no_non_streaming:
        updates["non_streaming"] = False
    if updates:
        try:
            campaign = CampaignSection.model_validate({**config.campaign.model_dump(), **updates})
        except ValidationError as exc:
            raise ConfigError(validation_message("flags", exc)) from exc
        config = config.model_copy(update={"campaign": campaign})
    if request.no_sweep:
        config = config.model_copy(update={"sweep": None})
    return config, profile
