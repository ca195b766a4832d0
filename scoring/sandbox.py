"""Run untrusted, model-generated Python and call one of its functions.

The code runs in a separate process, `python -I -S` (no site-packages, no
user environment). Containment comes from the operating system; each layer
below holds on its own, and which were in effect is recorded with every
result (`Isolation.mechanisms`), with the ones this machine could not give
listed in `Isolation.missing`, never dropped silently:

- **Private root** (Linux, root or unprivileged user namespaces): `unshare`
  makes fresh mount, PID, network and IPC namespaces, and the harness, as their
  root, builds a new root and `pivot_root`s into it, unmounting the host's
  (`mount-namespace`, `minimal-root`). The code sees only what the
  interpreter needs, read-only (/usr, /bin, /lib*, /etc/ld.so.cache, and the
  interpreter's prefix when it lives elsewhere; an interpreter under the
  user's home or the project checkout is not offered): no home, no checkout,
  no evidence store, no host /tmp. /proc is mounted fresh for the new PID
  namespace, so it lists only the sandbox's processes (`fresh-proc`). /tmp,
  /var/tmp, /dev/shm and the working directory /sandbox are empty, private,
  size- and inode-limited tmpfs mounts that vanish with the run
  (`private-tmp`); /dev holds only null, zero, full, random and urandom.
  Then every privilege goes: the code runs as `nobody` when the caller is
  root (`uid-nobody`), with no capabilities and no way to regain any by exec
  (`no-capabilities`, `no-new-privs`); the mounts are nosuid.
- **Network and IPC**: the network namespace has only a downed loopback, so
  no connection can leave, not even to the host's abstract Unix sockets
  (`network-namespace`); System V IPC objects live in a namespace of their
  own and vanish with the run (`ipc-namespace`).
- **Processes**: the PID namespace's first process is the harness, so
  killing it kills every process the code started, however it detached
  (`pid-namespace`); a process-count limit (RLIMIT_NPROC) caps forks.
- **Time, memory, files**: a wall-clock timeout (5 s by default) after which
  the whole process tree is killed, a CPU-time limit (RLIMIT_CPU), an
  address-space limit (RLIMIT_AS), no core dumps, at most 64 open files, and
  a size limit on every file it writes (RLIMIT_FSIZE), its captured stdout
  and stderr included.
- **Python guards**: an audit hook refuses process creation, sockets, ctypes,
  and writes outside the working directory. It stops careless code, not a
  determined one (`dir_fd`, `_imp.create_builtin` and the like go round it),
  which is why nothing above relies on it; it is the only guard left where
  the OS layers are missing.

Where a layer is missing, the next strongest combination that demonstrably
works is used (`launch_plan` probes each): without a mount namespace the
code sees the host's files (readable where `nobody` may read them) and its
/proc; as root without namespaces it runs as `nobody` only; on Windows only
the timeout, the process-tree kill and the Python guards apply.

**Verdicts.** The expected values never enter the sandbox. The caller asks
the harness over a pipe to load the code and then to call the function on
each case, one request at a time, each with a fresh random nonce; only the
answer echoing the nonce counts. Output the code prints, and lines it writes
to any descriptor or file, cannot answer a request that has not been sent,
so the most a forged line can claim is what the function could have
returned for the case being asked.

Misbehaviour of the code (timeouts, crashes, limits hit) is reported in the
result as a failed run. `SandboxError` is raised only when the sandbox itself
cannot run: no working interpreter, or the harness never started.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import queue
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import psutil

from common.errors import SandboxError
from scoring.sandbox_harness import EXIT_CPU_LIMIT, json_object
from scoring.score import JSONObject

_HARNESS_SOURCE = Path(__file__).with_name("sandbox_harness.py")
_CHECKOUT = Path(__file__).resolve().parents[1]
_TAIL_BYTES = 2000
_PROBE_TIMEOUT_S = 10.0
_EXIT_GRACE_S = 0.5
_ANSWERS_LIMIT = 1 << 20
_NOBODY_FALLBACK_ID = 65534
# The working directory inside a private root.
_PRIVATE_WORKDIR = "/sandbox"
# What a private root shows the interpreter, read-only, where the host has it.
_SYSTEM_PATHS = ("/usr", "/bin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache")
# The namespaces a plan may claim, by their name under /proc/self/ns.
_NAMESPACES = {
    "mnt": "mount-namespace",
    "pid": "pid-namespace",
    "net": "network-namespace",
    "ipc": "ipc-namespace",
}
# Every layer this module can give; those not in effect are listed as missing.
_LAYERS = (
    "mount-namespace",
    "minimal-root",
    "fresh-proc",
    "private-tmp",
    "pid-namespace",
    "network-namespace",
    "ipc-namespace",
    "uid-nobody",
    "no-capabilities",
    "no-new-privs",
    "RLIMIT_AS",
    "RLIMIT_CPU",
    "RLIMIT_NPROC",
    "RLIMIT_FSIZE",
    "RLIMIT_NOFILE",
    "RLIMIT_CORE",
)


@dataclass(frozen=True)
class SandboxLimits:
    """How much the untrusted code may use. `scratch_bytes` sizes each private
    tmpfs (/tmp, /var/tmp, /dev/shm, the working directory). `python_guards=False`
    leaves only the operating-system layers, which the tests use to prove those
    hold alone."""

    wall_timeout_s: float = 5.0
    cpu_time_s: int = 5
    memory_bytes: int = 512 * 1024 * 1024
    max_processes: int = 32
    max_output_bytes: int = 256 * 1024
    scratch_bytes: int = 8 * 1024 * 1024
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
    """Which protections were in effect for one run.

    `missing` names the layers of the full set (`mount-namespace`, `fresh-proc`,
    `private-tmp`, `uid-nobody`, the rlimits...) this machine could not give;
    `filesystem` is "private-root", "host-as-nobody" or "host-as-caller".
    """

    mechanisms: tuple[str, ...]
    missing: tuple[str, ...]
    network: str
    filesystem: str
    user: str
    interpreter: str

    def as_detail(self) -> JSONObject:
        """The isolation as a JSON-able dict."""
        return {
            "mechanisms": list(self.mechanisms),
            "missing": list(self.missing),
            "network": self.network,
            "filesystem": self.filesystem,
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
    With `read_only` set, the harness builds a private root showing only those
    paths and then switches to `become` (or, in a user namespace, just drops
    its capabilities). The defaults are the plan with no operating-system layer.
    """

    interpreter: str
    mechanisms: tuple[str, ...]
    prefix: tuple[str, ...] = ()
    run_as: tuple[int, int] | None = None
    clear_groups: bool = False
    expect_uid: int | None = None
    network_namespace: bool = False
    read_only: tuple[str, ...] | None = None
    become: tuple[int, int] | None = None


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
    spec: dict[str, Any] = {"code": code, "function_hint": function_hint}
    started = time.monotonic()
    deadline = started + limits.wall_timeout_s
    with _Harness(root, plan, spec, limits) as harness:
        ready = harness.channel.first(deadline)
        if ready is None or ready.get("event") != "ready":
            harness.stop()
            raise _not_started(root, plan, limits, ready, harness)
        loaded = harness.channel.ask({"op": "load"}, deadline)
        calls: list[dict[str, Any]] = []
        if loaded is not None and loaded.get("function") is not None:
            for case in cases:
                answer = harness.channel.ask({"op": "call", "args": list(case.args)}, deadline)
                if answer is None:
                    break
                calls.append(answer)
        harness.channel.close_requests()
        # The harness exits as soon as its requests end; a moment's grace
        # keeps an answer that came just before the deadline from timing out.
        grace = 0.0 if harness.channel.timed_out else _EXIT_GRACE_S
        exited = _wait_unreaped(harness.proc, max(deadline - time.monotonic(), grace))
        timed_out = harness.channel.timed_out or not exited
        exit_code = harness.stop()
    wall_s = time.monotonic() - started
    loaded = loaded or {}
    return SandboxResult(
        function_name=_opt_str(loaded.get("function")),
        load_error=_opt_str(loaded.get("error")),
        cases=_outcomes(cases, calls, timed_out, exit_code, bool(loaded)),
        stdout_tail=_tail(root / "stdout"),
        stderr_tail=_tail(root / "stderr"),
        timed_out=timed_out,
        killed_by=_killed_by(timed_out, exit_code),
        exit_code=None if timed_out else exit_code,
        isolation=_isolation(plan, ready),
        wall_s=wall_s,
    )


def _not_started(
    root: Path,
    plan: LaunchPlan,
    limits: SandboxLimits,
    first: dict[str, Any] | None,
    harness: _Harness,
) -> SandboxError:
    if first is not None and first.get("event") == "setup-failed":
        return SandboxError(
            f"the code sandbox could not build its private root ({first.get('error')}); "
            "it worked when probed, so check what changed on this machine"
        )
    hint = (
        f"; the sandbox user needs to enter {root.parent} (set TMPDIR elsewhere if it cannot)"
        if plan.expect_uid is not None and plan.read_only is None
        else ""
    )
    return SandboxError(
        "the code sandbox did not start (no harness report"
        + (f" within {limits.wall_timeout_s:g} s" if harness.channel.timed_out else "")
        + f"; exit code {harness.proc.returncode}): "
        + f"{_tail(root / 'stderr')[-300:] or 'no output'}{hint}"
    )


class _Harness:
    """The harness process with its request and answer pipes.

    Writes the spec (adding what the plan needs) next to a copy of the
    harness in `root`, starts it, and on `stop` kills whatever is left of it.
    """

    def __init__(
        self, root: Path, plan: LaunchPlan, spec: dict[str, Any], limits: SandboxLimits
    ) -> None:
        harness = root / "harness.py"
        shutil.copyfile(_HARNESS_SOURCE, harness)
        spec_path = root / "spec.json"
        spec = spec | {
            "python_guards": limits.python_guards,
            "limits": {
                "memory_bytes": limits.memory_bytes,
                "cpu_time_s": limits.cpu_time_s,
                "max_processes": limits.max_processes,
                "max_output_bytes": limits.max_output_bytes,
            },
        }
        if plan.read_only is not None:
            (root / "fs").mkdir()
            cwd = root
            spec["workdir"] = _PRIVATE_WORKDIR
            spec["filesystem"] = {
                "root": str(root / "fs"),
                "read_only": list(plan.read_only),
                "workdir": _PRIVATE_WORKDIR,
                "scratch_bytes": limits.scratch_bytes,
                "scratch_inodes": 1024,
                "become": None if plan.become is None else list(plan.become),
                # The harness refuses to mount anything in the caller's namespace.
                "outer_mount_ns": os.readlink("/proc/self/ns/mnt"),
            }
        else:
            cwd = root / "work"
            cwd.mkdir()
            spec["workdir"] = str(cwd)
        spec_path.write_text(json.dumps(spec), encoding="utf-8")
        if plan.read_only is None and plan.expect_uid not in (None, _current_uid()):
            # The unprivileged user may pass through the root (not list it),
            # read the harness and spec, and write only its working dir.
            root.chmod(0o711)
            harness.chmod(0o644)
            spec_path.chmod(0o644)
            os.chown(cwd, plan.expect_uid, _nobody_ids()[1])
        requests_read, requests_write = os.pipe()
        answers_read, answers_write = os.pipe()
        passed, ends = _inheritable(requests_read, answers_write)
        command = [
            *plan.prefix,
            plan.interpreter,
            "-I",
            "-S",
            str(harness),
            str(spec_path),
            *ends,
        ]
        try:
            with (root / "stdout").open("wb") as out, (root / "stderr").open("wb") as err:
                self.proc = subprocess.Popen(
                    command,
                    cwd=cwd,
                    env=_scrubbed_env(spec["workdir"]),
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=err,
                    close_fds=True,
                    start_new_session=os.name == "posix",
                    user=None if plan.run_as is None else plan.run_as[0],
                    group=None if plan.run_as is None else plan.run_as[1],
                    extra_groups=[] if plan.clear_groups else None,
                    **passed,
                )
        except OSError as exc:
            for fd in (requests_read, requests_write, answers_read, answers_write):
                os.close(fd)
            raise SandboxError(
                f"cannot start the code sandbox ({exc}); check that {plan.interpreter} runs"
            ) from exc
        os.close(requests_read)
        os.close(answers_write)
        self.channel = _Channel(answers_read, requests_write)
        self._exit_code: int | None = None

    def __enter__(self) -> _Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> int:
        """Kill the harness and everything it started; its exit code."""
        if self._exit_code is None:
            self.channel.close_requests()
            _kill_tree(self.proc)
            self._exit_code = self.proc.wait()
            self.channel.join()
        return self._exit_code


def _inheritable(*fds: int) -> tuple[dict[str, Any], list[str]]:
    """Popen arguments that hand `fds` to the child, and how the child names them."""
    if sys.platform == "win32":
        import msvcrt

        handles = [msvcrt.get_osfhandle(fd) for fd in fds]
        for handle in handles:
            os.set_handle_inheritable(handle, True)
        info = subprocess.STARTUPINFO(lpAttributeList={"handle_list": handles})
        return {"startupinfo": info}, [str(handle) for handle in handles]
    return {"pass_fds": fds}, [str(fd) for fd in fds]


class _Channel:
    """Requests to the harness and its JSON-line answers.

    A thread reads the answers so that every wait can time out, pipes on
    Windows included. At most `_ANSWERS_LIMIT` bytes are read: code that
    floods the pipe only stalls its own run until the deadline.
    """

    def __init__(self, answers: int, requests: int) -> None:
        self._requests: int | None = requests
        self._lines: queue.Queue[bytes | None] = queue.Queue()
        self._ended = False
        self.timed_out = False
        self._reader = threading.Thread(target=self._read, args=(answers,), daemon=True)
        self._reader.start()

    def _read(self, fd: int) -> None:
        buffered = b""
        total = 0
        with open(fd, "rb", buffering=0) as answers:
            while total < _ANSWERS_LIMIT:
                chunk = answers.read(65536)
                if not chunk:
                    break
                total += len(chunk)
                *lines, buffered = (buffered + chunk).split(b"\n")
                for line in lines:
                    if line.strip():
                        self._lines.put(line)
        self._lines.put(None)

    def _next(self, deadline: float) -> dict[str, Any] | None:
        """The next answer that parses, or None at the deadline or the pipe's end."""
        while not self._ended:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.0))
            except queue.Empty:
                self.timed_out = True
                return None
            if line is None:
                self._ended = True
                return None
            record = json_object(line)
            if record is not None:
                return record
        return None

    def first(self, deadline: float) -> dict[str, Any] | None:
        """The harness's first line, written before any untrusted code runs."""
        return self._next(deadline)

    def ask(self, request: dict[str, Any], deadline: float) -> dict[str, Any] | None:
        """Send `request` with a fresh nonce; the answer that echoes it, else None."""
        if self._requests is None or self.timed_out:
            return None
        nonce = secrets.token_hex(16)
        try:
            os.write(self._requests, json.dumps(request | {"nonce": nonce}).encode() + b"\n")
        except OSError:  # the harness is gone
            return None
        while (record := self._next(deadline)) is not None:
            if record.get("nonce") == nonce:
                return record
        return None

    def close_requests(self) -> None:
        """Tell the harness there is nothing more to do."""
        if self._requests is not None:
            os.close(self._requests)
            self._requests = None

    def join(self) -> None:
        """Wait briefly for the reader: a process that escaped the kill may hold the pipe."""
        self._reader.join(timeout=1.0)


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
    mechanisms = (*plan.mechanisms, *reported)
    if plan.network_namespace:
        network = "network-namespace"
    elif "audit-hook" in reported:
        network = "audit-hook"
    else:
        network = "none"
    uid = _current_uid()
    nobody = plan.expect_uid is not None and plan.expect_uid != uid
    if "minimal-root" in mechanisms:
        filesystem = "private-root"
    else:
        filesystem = "host-as-nobody" if nobody else "host-as-caller"
    if nobody:
        user = f"nobody (uid {plan.expect_uid})"
    else:
        user = "caller" if uid is None else f"caller (uid {uid})"
    return Isolation(
        mechanisms=mechanisms,
        missing=tuple(layer for layer in _LAYERS if layer not in mechanisms),
        network=network,
        filesystem=filesystem,
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


def _tail(path: Path) -> str:
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        f.seek(max(f.tell() - _TAIL_BYTES, 0))
        return f.read().decode("utf-8", "replace")


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _scrubbed_env(workdir: str) -> dict[str, str]:
    env = {"PATH": os.defpath, "HOME": workdir, "TMPDIR": workdir}
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

    Each candidate (a private root in mount, PID and network namespaces;
    namespaces without it; dropping to `nobody`; the caller's or the system
    interpreter) starts the real harness in probe mode, which reports what
    the code would see, so a layer counts only if it demonstrably took effect.
    """
    tried = []
    for plan in _candidate_plans():
        tried.append(plan.interpreter)
        if _probe(plan):
            return plan
    raise SandboxError(
        f"no Python interpreter could be started for the code sandbox (tried "
        f"{', '.join(dict.fromkeys(tried))}); check that {sys.executable} runs"
    )


def _candidate_plans() -> Iterator[LaunchPlan]:
    """Layer combinations, strongest first, each with every interpreter that suits it."""
    interpreters = _interpreter_candidates()
    common = ("fresh-temp-cwd", "scrubbed-env", "process-tree-kill")
    none = LaunchPlan(interpreter="", mechanisms=common)
    unshare = shutil.which("unshare") if sys.platform.startswith("linux") else None
    namespaces = ("ipc-namespace", "network-namespace", "pid-namespace")
    ns_flags = ("--ipc", "--net", "--pid", "--fork", "--kill-child")
    private = ("--mount", *ns_flags)

    def unshared(
        base: LaunchPlan, prefix: tuple[str, ...], layers: tuple[str, ...], **changes: Any
    ) -> LaunchPlan:
        """`base` started by `unshare` (`prefix`), in fresh IPC, network and PID namespaces."""
        mechanisms = (*common, *layers, *namespaces)
        return replace(
            base, prefix=prefix, mechanisms=mechanisms, network_namespace=True, **changes
        )

    plans: list[LaunchPlan] = []
    if os.name == "posix" and os.geteuid() == 0:
        uid, gid = _nobody_ids()
        nobody = replace(none, expect_uid=uid, clear_groups=True)
        if unshare is not None:
            plans.append(
                unshared(
                    none,
                    (unshare, *private),
                    ("uid-nobody", "mount-namespace"),
                    expect_uid=uid,
                    become=(uid, gid),
                    read_only=(),
                )
            )
            plans.append(
                unshared(
                    nobody,
                    (unshare, "--map-current-user", *ns_flags),
                    ("uid-nobody", "user-namespace"),
                    run_as=(uid, gid),
                )
            )
            # Without user namespaces, root can still make the namespaces
            # and switch to nobody inside them.
            setuid = (f"--setuid={uid}", f"--setgid={gid}")
            plans.append(unshared(nobody, (unshare, *ns_flags, *setuid), ("uid-nobody",)))
        plans.append(replace(nobody, run_as=(uid, gid), mechanisms=(*common, "uid-nobody")))
        if unshare is not None:
            plans.append(unshared(none, (unshare, *ns_flags), ()))
    elif unshare is not None:
        plans.append(
            unshared(
                none,
                (unshare, "--map-root-user", *private),
                ("user-namespace", "mount-namespace"),
                read_only=(),
            )
        )
        plans.append(
            unshared(none, (unshare, "--map-current-user", *ns_flags), ("user-namespace",))
        )
    plans.append(none)
    for plan in plans:
        for interpreter in interpreters:
            if plan.read_only is None:
                yield replace(plan, interpreter=interpreter)
                continue
            read_only = _read_only_paths(interpreter)
            if read_only is not None:
                real = os.path.realpath(interpreter)
                yield replace(plan, interpreter=real, read_only=read_only)


def _read_only_paths(interpreter: str) -> tuple[str, ...] | None:
    """What a private root must show for `interpreter` to run, or None when that
    would expose the user's home or the project checkout."""
    real = Path(os.path.realpath(interpreter))
    system = tuple(path for path in _SYSTEM_PATHS if os.path.lexists(path))
    if any(real.is_relative_to(os.path.realpath(path)) for path in system):
        return system
    # A prefix/bin/python layout: the prefix holds the standard library too.
    prefix = real.parent.parent
    for private in _private_places():
        if prefix.is_relative_to(private) or private.is_relative_to(prefix):
            return None
    return (*system, str(prefix))


def _private_places() -> list[Path]:
    places = [_CHECKOUT]
    with contextlib.suppress(RuntimeError, KeyError):
        places.append(Path.home().resolve())
    return places


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


def _probe(plan: LaunchPlan) -> bool:
    """Start the harness once under `plan` and check that every layer took effect."""
    root = Path(tempfile.mkdtemp(prefix="moe-sandbox-probe-"))
    try:
        # A file the private root must hide, readable by anyone on the host.
        canary = root / "canary"
        canary.write_text("", encoding="utf-8")
        canary.chmod(0o644)
        spec = {"code": "", "function_hint": "", "probe": {"canary": str(canary)}}
        limits = SandboxLimits(python_guards=False)
        try:
            harness = _Harness(root, plan, spec, limits)
        except (SandboxError, OSError):  # this plan cannot even be prepared here
            return False
        with harness:
            ready = harness.channel.first(time.monotonic() + _PROBE_TIMEOUT_S)
        return ready is not None and _layers_hold(plan, ready)
    finally:
        _remove_tree(root)


def _namespace_differs(name: str, facts: dict[str, Any]) -> bool:
    """Whether the probe ran in a namespace of kind `name` other than the caller's."""
    theirs = facts.get("namespaces", {}).get(name)
    try:
        ours = os.readlink(f"/proc/self/ns/{name}")
    except OSError:
        return False
    return isinstance(theirs, str) and theirs != ours


def _layers_hold(plan: LaunchPlan, ready: dict[str, Any]) -> bool:
    facts = ready.get("facts")
    python = ready.get("python")
    if ready.get("event") != "ready" or not isinstance(facts, dict) or not python:
        return False
    if tuple(python) < (3, 8):
        return False
    if plan.expect_uid is not None and facts.get("uid") != plan.expect_uid:
        return False
    if plan.network_namespace and facts.get("interfaces") != ["lo"]:
        return False
    for name, layer in _NAMESPACES.items():
        if layer in plan.mechanisms and not _namespace_differs(name, facts):
            return False
    if plan.read_only is None:
        return True
    no_caps = "0" * 16
    return (
        facts.get("pids") == ["1"]
        and facts.get("canary_visible") is False
        and facts.get("scratch_empty_and_writable") is True
        and facts.get("CapEff") == no_caps
        and facts.get("CapPrm") == no_caps
        and facts.get("CapBnd") == no_caps
        and facts.get("NoNewPrivs") == "1"
    )
