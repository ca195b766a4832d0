"""The child side of the sandbox: a standalone script, never imported by the caller.

`scoring.sandbox` copies this file into the sandbox and runs it as
`python -I -S harness.py spec.json` in a separate, unprivileged process. It
must run on any CPython 3.8+ (the sandbox may fall back to the system
interpreter), so it uses the standard library only, no newer syntax, and
annotations that are never evaluated (`from __future__ import annotations`).

Order matters: read the spec, open the result file, lower the resource
limits, install the audit hook, and only then execute the untrusted code.
Results go out as JSON lines on the result file; one "ready" line before any
untrusted code runs tells the caller that the sandbox itself worked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import types
from collections.abc import Callable
from typing import Any

# Exit code when the CPU-time limit fires; the caller maps it to "cpu-time-limit".
EXIT_CPU_LIMIT = 86
_REPR_LIMIT = 200
_ERROR_LIMIT = 500

# Events the untrusted code may not raise at all: new processes, signals to
# others, network sockets, and the introspection and FFI that would let it
# reach and disable this hook.
_BLOCKED_EVENTS = frozenset(
    {
        "os.fork",
        "os.forkpty",
        "os.system",
        "os.exec",
        "os.posix_spawn",
        "os.spawn",
        "os.startfile",
        "subprocess.Popen",
        "os.kill",
        "os.killpg",
        "signal.pthread_kill",
        "socket.__new__",
        "socket.connect",
        "socket.bind",
        "socket.sendto",
        "gc.get_objects",
        "gc.get_referrers",
        "gc.get_referents",
        "ctypes.dlopen",
        "ctypes.dlsym",
        "ctypes.cdata",
    }
)
_BLOCKED_IMPORTS = frozenset(
    {"ctypes", "_ctypes", "_posixsubprocess", "multiprocessing", "_multiprocessing", "_winapi"}
)
# Events whose first argument(s) are paths that get modified.
_PATH_EVENTS = {
    "os.remove": 1,
    "os.rmdir": 1,
    "os.mkdir": 1,
    "os.rename": 2,
    "os.link": 2,
    "os.symlink": 2,
    "os.truncate": 1,
    "os.chmod": 1,
    "os.chown": 1,
    "os.utime": 1,
    "os.setxattr": 1,
    "os.removexattr": 1,
    "shutil.rmtree": 1,
}


def main() -> None:
    """Run the spec named on the command line and write JSON-line results."""
    with open(sys.argv[1], encoding="utf-8") as spec_file:
        spec = json.load(spec_file)
    result_fd = os.open(spec["result_path"], os.O_WRONLY | os.O_APPEND)

    def emit(record: dict[str, Any]) -> None:
        os.write(result_fd, (json.dumps(record) + "\n").encode("utf-8"))

    limits = _apply_limits(spec["limits"])
    if spec["python_guards"]:
        _install_guards(os.path.realpath(spec["workdir"]))
        limits.append("audit-hook")
    emit({"event": "ready", "mechanisms": limits, "python": list(sys.version_info[:3])})

    namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": __builtins__}
    load_error = None
    try:
        exec(compile(spec["code"], "<solution>", "exec"), namespace)
    except BaseException as exc:  # the code may raise anything, SystemExit included
        load_error = _describe(exc)
    chosen = _choose_function(namespace, spec["function_hint"])
    emit(
        {
            "event": "loaded",
            "error": load_error,
            "function": None if chosen is None else chosen[0],
        }
    )
    if chosen is not None:
        for case in spec["cases"]:
            emit(_call(chosen[1], case["args"]))
    emit({"event": "done"})
    for stream in (sys.stdout, sys.stderr):
        # A full or closed stream must not hide the results.
        with contextlib.suppress(BaseException):
            stream.flush()
    # os._exit skips atexit handlers and finalisers the untrusted code registered.
    os._exit(0)


def _apply_limits(limits: dict[str, int]) -> list[str]:
    applied: list[str] = []
    if sys.platform == "win32":
        return applied
    import resource

    wanted = [
        ("RLIMIT_AS", limits["memory_bytes"]),
        ("RLIMIT_CPU", limits["cpu_time_s"]),
        ("RLIMIT_CORE", 0),
        ("RLIMIT_NPROC", limits["max_processes"]),
        ("RLIMIT_FSIZE", limits["max_output_bytes"]),
        ("RLIMIT_NOFILE", 64),
    ]
    for name, value in wanted:
        which = getattr(resource, name, None)
        if which is None:
            continue
        _, hard = resource.getrlimit(which)
        if hard != resource.RLIM_INFINITY:
            value = min(value, hard)
        # The CPU hard limit sits a second above the soft one, so the SIGXCPU
        # handler gets to report before the kernel's SIGKILL.
        new_hard = value + 1 if name == "RLIMIT_CPU" and hard == resource.RLIM_INFINITY else value
        try:
            resource.setrlimit(which, (value, new_hard))
        except (ValueError, OSError):
            continue
        if name == "RLIMIT_NPROC" and os.getuid() == 0:
            applied.append("RLIMIT_NPROC (not binding for uid 0)")
        else:
            applied.append(name)
    if hasattr(signal, "SIGXCPU"):
        # In a PID namespace the harness is the namespace's init, which the
        # kernel spares from default-action signals like SIGXCPU: the handler
        # is what makes the soft limit bite (the hard limit's SIGKILL always does).
        signal.signal(signal.SIGXCPU, _on_cpu_limit)
    if hasattr(signal, "SIGXFSZ"):
        # Ignored, a write past the size limit fails with EFBIG inside the code
        # instead of killing the process before it reports.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    return applied


def _on_cpu_limit(signum: int, frame: types.FrameType | None) -> None:
    os._exit(EXIT_CPU_LIMIT)


def _install_guards(workdir: str) -> None:
    """Add an audit hook that refuses processes, sockets, and writes outside `workdir`."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    allowed_files = frozenset({os.devnull})
    realpath = os.path.realpath
    getcwd = os.getcwd
    join = os.path.join
    fspath = os.fspath
    prefix = workdir.rstrip(os.sep) + os.sep

    def inside(path: object) -> bool:
        if isinstance(path, int):
            return True  # an already-open descriptor: its opening was checked
        try:
            name = fspath(path)  # type: ignore[call-overload]
        except TypeError:
            return False
        if isinstance(name, bytes):
            name = name.decode("utf-8", "surrogateescape")
        if name in allowed_files:
            return True
        full = realpath(join(getcwd(), name))
        return full == workdir or full.startswith(prefix)

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if event == "open":
            path, mode, flags = args[0], args[1], args[2]
            writing = bool(flags & write_flags) or (
                isinstance(mode, str) and any(c in mode for c in "wax+")
            )
            if writing and not inside(path):
                raise PermissionError("sandbox: writing outside the working directory is refused")
        elif event in _BLOCKED_EVENTS:
            raise PermissionError("sandbox: " + event + " is refused")
        elif event == "import" and str(args[0]).split(".")[0] in _BLOCKED_IMPORTS:
            raise ImportError("sandbox: importing " + str(args[0]) + " is refused")
        elif event in _PATH_EVENTS:
            for path in args[: _PATH_EVENTS[event]]:
                if not inside(path):
                    raise PermissionError("sandbox: changing files outside the working directory")

    sys.addaudithook(hook)


def _choose_function(namespace: dict[str, Any], hint: str) -> tuple[str, Callable[..., Any]] | None:
    """The function named `hint`, else the first whose name contains it, else the first."""
    functions = [
        (name, value)
        for name, value in namespace.items()
        if isinstance(value, types.FunctionType) and value.__code__.co_filename == "<solution>"
    ]
    hint = hint.lower()
    for test in (
        lambda name: name.lower() == hint,
        lambda name: hint in name.lower(),
        lambda name: True,
    ):
        for name, value in functions:
            if test(name):
                return name, value
    return None


def _call(function: Callable[..., Any], args: list[Any]) -> dict[str, Any]:
    record: dict[str, Any] = {"event": "call", "args": args, "value": None, "repr": None}
    try:
        value = function(*args)
    except BaseException as exc:
        record["error"] = _describe(exc)
        return record
    record["error"] = None
    if type(value) is int and -(2**63) <= value < 2**63:
        record["value"] = value
    try:
        record["repr"] = repr(value)[:_REPR_LIMIT]
    except BaseException:
        record["repr"] = "<unrepresentable " + type(value).__name__ + ">"
    return record


def _describe(exc: BaseException) -> str:
    try:
        text = type(exc).__name__ + ": " + str(exc)
    except BaseException:
        text = type(exc).__name__
    return text[:_ERROR_LIMIT]


if __name__ == "__main__":
    main()
