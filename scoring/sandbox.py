"""Run untrusted, model-generated Python and call one of its functions.

The code runs in a separate process, `python -I -S` (no site-packages, no
user environment), with layers that each stop a misbehaving program on their
own; which layers were in effect is recorded with every result:

- **Time**: a wall-clock timeout (5 s by default) after which the whole
  process tree is killed, and a CPU-time limit (RLIMIT_CPU).
- **Memory and output**: an address-space limit (RLIMIT_AS), no core dumps,
  a size limit on every file it writes (RLIMIT_FSIZE) including its
  captured stdout and stderr, and at most 64 open files.
- **Processes**: a process-count limit (RLIMIT_NPROC). The kernel does not
  apply it to uid 0, so when the caller is root the code runs as the
  unprivileged user `nobody` (which also keeps it from writing the caller's
  files). If the caller's interpreter is not reachable for `nobody` (say it
  lives under /root), the system `python3` runs the harness instead.
- **Namespaces** (Linux, when `unshare` works here): a private network
  namespace with only a downed loopback, so no connection can leave, and a
  private PID namespace, so killing its first process kills every process the
  code started, however it detached.
- **Python guards**: an audit hook installed before the code runs refuses
  process creation, sockets, ctypes, and writes outside the sandbox directory.
  It is the only network guard where namespaces are unavailable. It stops
  careless code, not a determined attacker inside the interpreter.
- **Files and environment**: a fresh temporary directory as the working
  directory, deleted afterwards, and an environment holding only PATH, HOME
  and TMPDIR (both pointing at that directory). Running as `nobody` keeps the
  code out of the caller's files, but not out of world-writable directories
  such as /tmp: there only the Python guard refuses the write.

On Windows there is no `resource` module and no namespaces: only the timeout,
the process-tree kill and the Python guards apply, and the result says so.

Misbehaviour of the code (timeouts, crashes, limits hit) is reported in the
result as a failed run. `SandboxError` is raised only when the sandbox itself
cannot run: no working interpreter, or the harness never started.

The threat model is a model that writes broken or runaway code, not an
adversary gaming the score: code that knows this harness could forge its own
results, but it cannot get out.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from evidence.errors import SandboxError
from scoring.sandbox_harness import EXIT_CPU_LIMIT
from scoring.score import JSONObject

_HARNESS_SOURCE = Path(__file__).with_name("sandbox_harness.py")
_TAIL_BYTES = 2000
_PROBE_TIMEOUT_S = 10.0
_NOBODY_FALLBACK_ID = 65534


@dataclass(frozen=True)
class SandboxLimits:
    """How much the untrusted code may use. `python_guards=False` leaves only
    the operating-system layers, which the tests use to prove those hold alone."""

    wall_timeout_s: float = 5.0
    cpu_time_s: int = 5
    memory_bytes: int = 512 * 1024 * 1024
    max_processes: int = 32
    max_output_bytes: int = 256 * 1024
    python_guards: bool = True


@dataclass(frozen=True)
class FunctionCase:
    """One call to make: `function(*args)` should return `expected`."""

    args: tuple[int, ...]
    expected: int


@dataclass(frozen=True)
class CaseOutcome:
    """What one call returned. `passed` needs an int equal to the expected value."""

    args: tuple[int, ...]
    expected: int
    returned: str | None
    passed: bool
    error: str | None

    def as_detail(self) -> JSONObject:
        """The outcome as a JSON-able dict."""
        return {
            "args": list(self.args),
            "expected": self.expected,
            "returned": self.returned,
            "passed": self.passed,
            "error": self.error,
        }


@dataclass(frozen=True)
class Isolation:
    """Which protections were in effect for one run."""

    mechanisms: tuple[str, ...]
    network: str
    user: str
    interpreter: str

    def as_detail(self) -> JSONObject:
        """The isolation as a JSON-able dict."""
        return {
            "mechanisms": list(self.mechanisms),
            "network": self.network,
            "user": self.user,
            "interpreter": self.interpreter,
        }


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of running code in the sandbox and calling its function."""

    function_name: str | None
    load_error: str | None
    cases: tuple[CaseOutcome, ...]
    stdout_tail: str
    stderr_tail: str
    timed_out: bool
    killed_by: str | None
    exit_code: int | None
    isolation: Isolation
    wall_s: float

    @property
    def passed_cases(self) -> int:
        """How many cases returned the expected value."""
        return sum(case.passed for case in self.cases)

    @property
    def all_passed(self) -> bool:
        """True when there were cases and every one passed."""
        return bool(self.cases) and all(case.passed for case in self.cases)

    def as_detail(self) -> JSONObject:
        """The result as a JSON-able dict, output tails included."""
        return {
            "function": self.function_name,
            "load_error": self.load_error,
            "cases": [case.as_detail() for case in self.cases],
            "passed_cases": self.passed_cases,
            "stdout_tail": self.stdout_tail,
            "stderr_tail": self.stderr_tail,
            "timed_out": self.timed_out,
            "killed_by": self.killed_by,
            "exit_code": self.exit_code,
            "isolation": self.isolation.as_detail(),
            "wall_s": round(self.wall_s, 3),
        }


@dataclass(frozen=True)
class LaunchPlan:
    """How to start the harness: the strongest combination that worked here.

    `prefix` wraps the command (the `unshare` call, if any); `run_as` is the
    (uid, gid) the process switches to before exec; `clear_groups` drops
    root's supplementary groups; `expect_uid` is the uid the code ends up with.
    """

    prefix: tuple[str, ...]
    interpreter: str
    run_as: tuple[int, int] | None
    clear_groups: bool
    expect_uid: int | None
    mechanisms: tuple[str, ...]
    network_namespace: bool


def run_function_cases(
    code: str,
    cases: Sequence[FunctionCase],
    *,
    function_hint: str,
    limits: SandboxLimits | None = None,
    base_dir: Path | None = None,
) -> SandboxResult:
    """Run `code` in the sandbox and call its function on each case.

    The function called is the one named `function_hint`, else the first
    whose name contains it, else the first function the code defines. Calls
    run in order in one process, so a hang in one case leaves the later ones
    "not run". Raises `SandboxError` only when the sandbox itself fails.
    """
    limits = limits or SandboxLimits()
    plan = launch_plan()
    root = Path(tempfile.mkdtemp(prefix="moe-sandbox-", dir=base_dir))
    try:
        return _run_in(root, plan, code, cases, function_hint, limits)
    finally:
        _remove_tree(root)


def _run_in(
    root: Path,
    plan: LaunchPlan,
    code: str,
    cases: Sequence[FunctionCase],
    function_hint: str,
    limits: SandboxLimits,
) -> SandboxResult:
    workdir = root / "work"
    workdir.mkdir()
    harness = root / "harness.py"
    shutil.copyfile(_HARNESS_SOURCE, harness)
    result_path = root / "result.jsonl"
    result_path.touch()
    spec_path = root / "spec.json"
    spec: dict[str, Any] = {
        "code": code,
        "cases": [{"args": list(case.args)} for case in cases],
        "function_hint": function_hint,
        "workdir": str(workdir),
        "result_path": str(result_path),
        "python_guards": limits.python_guards,
        "limits": {
            "memory_bytes": limits.memory_bytes,
            "cpu_time_s": limits.cpu_time_s,
            "max_processes": limits.max_processes,
            "max_output_bytes": limits.max_output_bytes,
        },
    }
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    if plan.expect_uid is not None and plan.expect_uid != _current_uid():
        # The unprivileged user may pass through the root (not list it), read
        # the harness and spec, and write only its working dir and result file.
        root.chmod(0o711)
        harness.chmod(0o644)
        spec_path.chmod(0o644)
        for owned in (workdir, result_path):
            os.chown(owned, plan.expect_uid, _nobody_ids()[1])
    command = [*plan.prefix, plan.interpreter, "-I", "-S", str(harness), str(spec_path)]
    started = time.monotonic()
    with (root / "stdout").open("wb") as out, (root / "stderr").open("wb") as err:
        try:
            proc = subprocess.Popen(
                command,
                cwd=workdir,
                env=_scrubbed_env(workdir),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                close_fds=True,
                start_new_session=os.name == "posix",
                user=None if plan.run_as is None else plan.run_as[0],
                group=None if plan.run_as is None else plan.run_as[1],
                extra_groups=[] if plan.clear_groups else None,
            )
        except OSError as exc:
            raise SandboxError(
                f"cannot start the code sandbox ({exc}); check that {plan.interpreter} runs"
            ) from exc
        timed_out = not _wait_unreaped(proc, limits.wall_timeout_s)
        _kill_tree(proc)
        exit_code = proc.wait()
    wall_s = time.monotonic() - started
    records = _read_records(result_path)
    stderr_tail = _tail(root / "stderr")
    ready = next((r for r in records if r.get("event") == "ready"), None)
    if ready is None:
        hint = (
            f"; the sandbox user needs to enter {root.parent} (set TMPDIR elsewhere if it cannot)"
            if plan.expect_uid is not None
            else ""
        )
        raise SandboxError(
            "the code sandbox did not start (no harness report"
            + (f" within {limits.wall_timeout_s:g} s" if timed_out else "")
            + f"; exit code {exit_code}): {stderr_tail[-300:] or 'no output'}{hint}"
        )
    loaded = next((r for r in records if r.get("event") == "loaded"), {})
    calls = [r for r in records if r.get("event") == "call"]
    return SandboxResult(
        function_name=_opt_str(loaded.get("function")),
        load_error=_opt_str(loaded.get("error")),
        cases=_outcomes(cases, calls, timed_out, exit_code, bool(loaded)),
        stdout_tail=_tail(root / "stdout"),
        stderr_tail=stderr_tail,
        timed_out=timed_out,
        killed_by=_killed_by(timed_out, exit_code),
        exit_code=None if timed_out else exit_code,
        isolation=_isolation(plan, ready),
        wall_s=wall_s,
    )


def _outcomes(
    cases: Sequence[FunctionCase],
    calls: list[dict[str, Any]],
    timed_out: bool,
    exit_code: int,
    loaded: bool,
) -> tuple[CaseOutcome, ...]:
    outcomes = []
    for index, case in enumerate(cases):
        if index < len(calls):
            call = calls[index]
            value = call.get("value")
            outcomes.append(
                CaseOutcome(
                    args=case.args,
                    expected=case.expected,
                    returned=_opt_str(call.get("repr")),
                    passed=type(value) is int and value == case.expected,
                    error=_opt_str(call.get("error")),
                )
            )
            continue
        if timed_out:
            why = "not run: the sandbox timed out"
        elif loaded:
            why = "not run: no function to call" if exit_code == 0 else "not run: the process died"
        else:
            why = "not run: the code did not finish loading"
        outcomes.append(CaseOutcome(case.args, case.expected, None, False, why))
    return tuple(outcomes)


def _killed_by(timed_out: bool, exit_code: int) -> str | None:
    if timed_out:
        return "wall-timeout"
    if exit_code == EXIT_CPU_LIMIT:
        return "cpu-time-limit"
    if exit_code < 0:
        try:
            return signal.Signals(-exit_code).name
        except ValueError:
            return f"signal {-exit_code}"
    return None


def _isolation(plan: LaunchPlan, ready: dict[str, Any]) -> Isolation:
    reported = [str(m) for m in ready.get("mechanisms", [])]
    guards = "audit-hook" in reported
    if plan.network_namespace:
        network = "network-namespace"
    elif guards:
        network = "audit-hook"
    else:
        network = "none"
    uid = _current_uid()
    if plan.expect_uid is not None and plan.expect_uid != uid:
        user = f"nobody (uid {plan.expect_uid})"
    else:
        user = "caller" if uid is None else f"caller (uid {uid})"
    return Isolation(
        mechanisms=(*plan.mechanisms, *reported),
        network=network,
        user=user,
        interpreter=plan.interpreter,
    )


def _wait_unreaped(proc: subprocess.Popen[bytes], timeout_s: float) -> bool:
    """Wait for the process to exit without reaping it; False on timeout.

    Leaving it a zombie keeps its PID (and so its process group id) from
    being reused until `_kill_tree` has swept the group.
    """
    deadline = time.monotonic() + timeout_s
    waitid = getattr(os, "waitid", None)
    if waitid is None:
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return True
    pause = 0.001
    while True:
        status = waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        if status is not None:
            return True
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return False
        time.sleep(min(pause, remaining))
        pause = min(pause * 2, 0.02)


def _kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """Kill the process, its process group and every descendant still around."""
    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    if os.name == "posix":
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    for child in descendants:
        with contextlib.suppress(psutil.Error):
            child.kill()
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    _wait_gone(descendants, timeout_s=2.0)


def _wait_gone(processes: list[psutil.Process], timeout_s: float) -> None:
    """Wait until the killed processes are gone or zombies.

    Zombies count as gone: they run no code, and the reaper of a killed
    grandchild may be a container's init that never reaps promptly.
    """
    deadline = time.monotonic() + timeout_s
    pending = processes
    while pending and time.monotonic() < deadline:
        still = []
        for process in pending:
            try:
                if process.status() != psutil.STATUS_ZOMBIE:
                    still.append(process)
            except psutil.Error:
                pass
        pending = still
        if pending:
            time.sleep(0.01)


def _read_records(path: Path) -> list[dict[str, Any]]:
    records = []
    for line in path.read_bytes().decode("utf-8", "replace").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _tail(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - _TAIL_BYTES, 0))
        return f.read().decode("utf-8", "replace")


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _scrubbed_env(workdir: Path) -> dict[str, str]:
    env = {"PATH": os.defpath, "HOME": str(workdir), "TMPDIR": str(workdir)}
    if os.name == "nt":
        # Python on Windows cannot initialise without SYSTEMROOT.
        env["SYSTEMROOT"] = os.environ.get("SYSTEMROOT", r"C:\Windows")
    return env


def _remove_tree(root: Path) -> None:
    def make_writable_and_retry(function: Any, path: str, _exc: object) -> None:
        # The code may have left read-only files or directories behind.
        os.chmod(path, 0o700)
        function(path)

    if sys.version_info >= (3, 12):
        shutil.rmtree(root, onexc=make_writable_and_retry)
    else:
        shutil.rmtree(root, onerror=make_writable_and_retry)


@functools.cache
def launch_plan() -> LaunchPlan:
    """Find, once per process, the strongest isolation that works on this machine.

    Each candidate (namespaces via `unshare`, dropping to `nobody`, the
    caller's or the system interpreter) is tried with a tiny probe that
    reports its uid and network interfaces, so a layer counts only if it
    demonstrably took effect.
    """
    interpreters = _interpreter_candidates()
    for layers in _candidate_layers():
        for interpreter in interpreters:
            plan = LaunchPlan(interpreter=interpreter, **layers)
            if _probe(plan):
                return plan
    raise SandboxError(
        f"no Python interpreter could be started for the code sandbox (tried "
        f"{', '.join(interpreters)}); check that {sys.executable} runs"
    )


def _candidate_layers() -> list[dict[str, Any]]:
    """Layer combinations, strongest first."""
    common = ("fresh-temp-cwd", "scrubbed-env", "process-tree-kill")
    none: dict[str, Any] = {
        "prefix": (),
        "run_as": None,
        "clear_groups": False,
        "expect_uid": None,
        "mechanisms": common,
        "network_namespace": False,
    }
    if os.name != "posix":
        return [none]
    unshare = shutil.which("unshare") if sys.platform.startswith("linux") else None
    namespaces = ("network-namespace", "pid-namespace")
    ns_flags = ("--net", "--pid", "--fork", "--kill-child")
    layers: list[dict[str, Any]] = []
    if os.geteuid() == 0:
        uid, gid = _nobody_ids()
        nobody = {"expect_uid": uid, "clear_groups": True}
        if unshare is not None:
            layers.append(
                none
                | nobody
                | {
                    "prefix": (unshare, "--map-current-user", *ns_flags),
                    "run_as": (uid, gid),
                    "mechanisms": (*common, "uid-nobody", "user-namespace", *namespaces),
                    "network_namespace": True,
                }
            )
            # Without user namespaces, root can still make the namespaces
            # and switch to nobody inside them.
            layers.append(
                none
                | nobody
                | {
                    "prefix": (unshare, *ns_flags, f"--setuid={uid}", f"--setgid={gid}"),
                    "mechanisms": (*common, "uid-nobody", *namespaces),
                    "network_namespace": True,
                }
            )
        layers.append(none | nobody | {"run_as": (uid, gid), "mechanisms": (*common, "uid-nobody")})
        if unshare is not None:
            layers.append(
                none
                | {
                    "prefix": (unshare, *ns_flags),
                    "mechanisms": (*common, *namespaces),
                    "network_namespace": True,
                }
            )
    elif unshare is not None:
        layers.append(
            none
            | {
                "prefix": (unshare, "--map-current-user", *ns_flags),
                "mechanisms": (*common, "user-namespace", *namespaces),
                "network_namespace": True,
            }
        )
    layers.append(none)
    return layers


def _current_uid() -> int | None:
    return os.getuid() if hasattr(os, "getuid") else None


def _nobody_ids() -> tuple[int, int]:
    try:
        import pwd

        entry = pwd.getpwnam("nobody")
    except (ImportError, KeyError):
        return _NOBODY_FALLBACK_ID, _NOBODY_FALLBACK_ID
    return entry.pw_uid, entry.pw_gid


def _interpreter_candidates() -> list[str]:
    candidates = [sys.executable, getattr(sys, "_base_executable", sys.executable)]
    for name in ("/usr/bin/python3", "/usr/local/bin/python3", shutil.which("python3")):
        if name is not None:
            candidates.append(name)
    unique: list[str] = []
    for candidate in candidates:
        if candidate and os.path.exists(candidate) and candidate not in unique:
            unique.append(candidate)
    return unique


_PROBE = (
    "import os, socket, sys\n"
    "names = [n for _, n in socket.if_nameindex()] if hasattr(socket, 'if_nameindex') else []\n"
    "uid = os.getuid() if hasattr(os, 'getuid') else -1\n"
    "print(uid, sys.version_info >= (3, 8), ','.join(names) or '-')\n"
)


def _probe(plan: LaunchPlan) -> bool:
    """Start the plan's interpreter once and check that every layer took effect."""
    try:
        completed = subprocess.run(
            [*plan.prefix, plan.interpreter, "-I", "-S", "-c", _PROBE],
            cwd=os.sep,
            env=_scrubbed_env(Path(tempfile.gettempdir())),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=_PROBE_TIMEOUT_S,
            user=None if plan.run_as is None else plan.run_as[0],
            group=None if plan.run_as is None else plan.run_as[1],
            extra_groups=[] if plan.clear_groups else None,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    fields = completed.stdout.decode("utf-8", "replace").split()
    if completed.returncode != 0 or len(fields) != 3 or fields[1] != "True":
        return False
    if plan.expect_uid is not None and fields[0] != str(plan.expect_uid):
        return False
    return not plan.network_namespace or fields[2] == "lo"
