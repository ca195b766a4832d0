"""The child side of the sandbox: a standalone script (the caller imports only its
exit codes and its line parser, `json_object`, which both ends of the pipes share).

`scoring.sandbox` copies this file next to a spec and runs it as
`python -I -S harness.py spec.json REQUESTS ANSWERS`, where REQUESTS and
ANSWERS are the two ends of pipes to the caller (file descriptors; handles on
Windows). It must run on any CPython 3.8+ (the sandbox may use the system
interpreter), so it uses the standard library only, no newer syntax, and
annotations that are never evaluated (`from __future__ import annotations`).

Order matters: read the spec; where the spec asks for a private root (Linux,
started as root of fresh mount, PID, network and IPC namespaces), build it, switch
into it and give up every privilege; lower the resource limits; install the
audit hook; say "ready"; and only then execute the untrusted code.

The caller asks, one request at a time, for the code to be loaded and for
each case to be called; every request carries a fresh random nonce, and the
caller accepts only the answer that echoes it. The untrusted code shares this
process and so can write to the answer pipe, or print anything anywhere, but
it cannot answer a request before it is sent: the most a forged line can say
is what the function itself could have returned for the case being asked.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import types
from collections.abc import Callable, Iterator
from typing import Any

# Exit code when the CPU-time limit fires; the caller maps it to "cpu-time-limit".
EXIT_CPU_LIMIT = 86
# Exit code when the private root could not be built; the caller reports the error line.
EXIT_SETUP_FAILED = 87
_REPR_LIMIT = 200
_ERROR_LIMIT = 500
_REQUEST_LIMIT = 1 << 20

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

# Linux mount(2) flags, from <sys/mount.h>.
_MS_RDONLY = 0x1
_MS_NOSUID = 0x2
_MS_NODEV = 0x4
_MS_NOEXEC = 0x8
_MS_REMOUNT = 0x20
_MS_NOATIME = 0x400
_MS_NODIRATIME = 0x800
_MS_BIND = 0x1000
_MS_REC = 0x4000
_MS_PRIVATE = 0x40000
_MS_RELATIME = 0x200000
_MNT_DETACH = 0x2
# statvfs f_flag bits that a bind mount inherits and, in a user namespace,
# may not drop: their mount(2) counterparts.
_LOCKED_FLAGS = {1: _MS_RDONLY, 2: _MS_NOSUID, 4: _MS_NODEV, 8: _MS_NOEXEC}
_LOCKED_FLAGS.update({1024: _MS_NOATIME, 2048: _MS_NODIRATIME, 4096: _MS_RELATIME})
# pivot_root has no libc wrapper; its syscall number per architecture.
_SYS_PIVOT_ROOT = {
    "x86_64": 155,
    "aarch64": 41,
    "arm64": 41,
    "riscv64": 41,
    "loongarch64": 41,
    "ppc64le": 203,
    "ppc64": 203,
    "s390x": 217,
    "i686": 217,
    "i386": 217,
    "armv7l": 218,
}
_PR_CAPBSET_DROP = 24
_PR_SET_NO_NEW_PRIVS = 38
_CAP_VERSION_3 = 0x20080522
_DEVICES = ("null", "zero", "full", "random", "urandom")
# Private, size-limited tmpfs mounts: everything the code can write lives here.
_SCRATCH = ("tmp", "var/tmp", "dev/shm")


def main() -> None:
    """Run the spec named on the command line, answering the caller's requests."""
    with open(sys.argv[1], encoding="utf-8") as spec_file:
        spec = json.load(spec_file)
    requests, answers = _channel(sys.argv[2], sys.argv[3])

    def send(record: dict[str, Any]) -> None:
        # The leading newline ends any partial line the code left in the pipe,
        # and one write of a short line is atomic, so no answer is spliced.
        os.write(answers, b"\n" + json.dumps(record).encode("utf-8") + b"\n")

    mechanisms: list[str] = []
    if spec.get("filesystem"):
        try:
            mechanisms += _enter_private_root(spec["filesystem"])
        except Exception as exc:
            send({"event": "setup-failed", "error": _describe(exc)})
            os._exit(EXIT_SETUP_FAILED)
    mechanisms += _apply_limits(spec["limits"])
    if spec["python_guards"]:
        _install_guards(os.path.realpath(spec["workdir"]))
        mechanisms.append("audit-hook")
    ready: dict[str, Any] = {
        "event": "ready",
        "mechanisms": mechanisms,
        "python": list(sys.version_info[:3]),
    }
    if spec.get("probe"):
        ready["facts"] = _facts(spec["probe"])
        send(ready)
        os._exit(0)
    send(ready)
    _serve(requests, send, spec)


def _serve(requests: int, send: Callable[[dict[str, Any]], None], spec: dict[str, Any]) -> None:
    """Answer "load" and "call" requests until the caller closes the pipe."""
    namespace: dict[str, Any] = {"__name__": "solution", "__builtins__": __builtins__}
    chosen = None
    for request in _requests(requests):
        nonce = request.get("nonce")
        if request.get("op") == "load":
            load_error = None
            try:
                exec(compile(spec["code"], "<solution>", "exec"), namespace)
            except BaseException as exc:  # the code may raise anything, SystemExit included
                load_error = _describe(exc)
            chosen = _choose_function(namespace, spec["function_hint"])
            function = None if chosen is None else chosen[0]
            send({"event": "loaded", "nonce": nonce, "error": load_error, "function": function})
        elif request.get("op") == "call" and chosen is not None:
            record = _call(chosen[1], request.get("args", []))
            record["nonce"] = nonce
            send(record)
    for stream in (sys.stdout, sys.stderr):
        # A full or closed stream must not hide the results.
        with contextlib.suppress(BaseException):
            stream.flush()
    # os._exit skips atexit handlers and finalisers the untrusted code registered.
    os._exit(0)


def _channel(requests: str, answers: str) -> tuple[int, int]:
    """The pipe ends as file descriptors (Windows passes handles)."""
    if sys.platform == "win32":
        import msvcrt

        return (
            msvcrt.open_osfhandle(int(requests), os.O_RDONLY),
            msvcrt.open_osfhandle(int(answers), os.O_WRONLY),
        )
    return int(requests), int(answers)


def _requests(fd: int) -> Iterator[dict[str, Any]]:
    """JSON-line requests from the caller until it closes its end."""
    buffered = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except OSError:  # the code may have closed or replaced the descriptor
            return
        if not chunk:
            return
        buffered += chunk
        *lines, buffered = buffered.split(b"\n")
        if len(buffered) > _REQUEST_LIMIT:
            return
        for line in lines:
            request = json_object(line)
            if request is not None:
                yield request


def json_object(line: bytes) -> dict[str, Any] | None:
    """One line of the pipe protocol as a JSON object, or None where it is not one
    (both ends skip such lines: the untrusted code may write anything to the pipes)."""
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _enter_private_root(fs: dict[str, Any]) -> list[str]:
    """Build a root of read-only binds and private tmpfs mounts, move into it, drop privileges.

    Runs as root of the fresh mount and PID namespaces `unshare` made (real
    root, or root of a new user namespace). Afterwards the process sees only
    the paths in `fs["read_only"]`, a /proc of its own PID namespace, a few
    device nodes, and empty tmpfs mounts of `fs["scratch_bytes"]` each on
    /tmp, /var/tmp, /dev/shm and its working directory; the host's root is
    unmounted from the namespace, not just out of reach.
    """
    if sys.platform != "linux":
        raise OSError("a private root needs Linux namespaces")
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)

    def check(result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, what + ": " + os.strerror(errno))

    def mount(
        source: str | None, target: str, kind: str | None, flags: int, data: str = ""
    ) -> None:
        check(
            libc.mount(
                _bytes(source), _bytes(target), _bytes(kind), ctypes.c_ulong(flags), _bytes(data)
            ),
            "mount " + target,
        )

    def tmpfs(target: str, options: str, flags: int = _MS_NOSUID | _MS_NODEV) -> None:
        mount("tmpfs", target, "tmpfs", flags, options)

    # Anywhere but in fresh mount and PID namespaces these mounts would land
    # on the host: refuse rather than trust the command line.
    if os.readlink("/proc/self/ns/mnt") == fs["outer_mount_ns"] or os.getpid() != 1:
        raise OSError("a private root is built only as PID 1 of fresh namespaces")
    syscall_number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if syscall_number is None:
        raise OSError("pivot_root: unknown architecture " + os.uname().machine)
    owner = fs["become"] or [os.getuid(), os.getgid()]
    scratch = "size={},nr_inodes={}".format(fs["scratch_bytes"], fs["scratch_inodes"])
    # No mount made here may propagate back to the host.
    mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    tmpfs(fs["root"], "size=1m,nr_inodes=4096,mode=755")
    os.chdir(fs["root"])
    for source in fs["read_only"]:
        target = source.lstrip("/")
        parent = os.path.dirname(target)
        if parent:
            os.makedirs(parent, mode=0o755, exist_ok=True)
        if os.path.islink(source):
            os.symlink(os.readlink(source), target)
            continue
        if os.path.isdir(source):
            os.mkdir(target, 0o755)
        else:
            open(target, "w").close()
        mount(source, target, None, _MS_BIND)
        kept = sum(m for bit, m in _LOCKED_FLAGS.items() if os.statvfs(source).f_flag & bit)
        flags = _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV | kept
        mount(None, target, None, flags)
    os.makedirs("proc", 0o755)
    try:
        # subset=pid (Linux 5.8+) also hides the kernel's own files.
        mount("proc", "proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, "subset=pid")
    except OSError:
        mount("proc", "proc", "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    os.makedirs("dev", 0o755)
    tmpfs("dev", "size=64k,nr_inodes=64,mode=755", _MS_NOSUID | _MS_NOEXEC)
    for name in _DEVICES:
        open("dev/" + name, "w").close()
        mount("/dev/" + name, "dev/" + name, None, _MS_BIND)
    os.symlink("/proc/self/fd", "dev/fd")
    for place in (*_SCRATCH, fs["workdir"].lstrip("/")):
        os.makedirs(place, 0o755, exist_ok=True)
        mode = "mode=700,uid={},gid={}".format(*owner) if place not in _SCRATCH else "mode=1777"
        tmpfs(place, scratch + "," + mode)
    mount(None, "dev", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NOEXEC)
    check(libc.syscall(syscall_number, b".", b"."), "pivot_root")
    # The old root now lies under the new one: detach it from the namespace.
    check(libc.umount2(b".", _MNT_DETACH), "umount the host root")
    os.chdir("/")
    mount(None, "/", None, _MS_REMOUNT | _MS_BIND | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)
    os.chdir(fs["workdir"])
    _drop_privileges(libc, fs["become"])
    # The code must not find ctypes already imported (that skips the import guard).
    for name in [n for n in sys.modules if n in ("ctypes", "_ctypes") or n.startswith("ctypes.")]:
        del sys.modules[name]
    return ["fresh-proc", "private-tmp", "minimal-root", "no-capabilities", "no-new-privs"]


def _drop_privileges(libc: Any, become: list[int] | None) -> None:
    """Leave root for good: no capabilities now, none regained by exec, and `become`'s ids."""
    if sys.platform != "linux":
        raise OSError("capabilities are a Linux notion")
    import ctypes

    def check(result: int, what: str) -> None:
        if result != 0:
            errno = ctypes.get_errno()
            raise OSError(errno, what + ": " + os.strerror(errno))

    # An empty bounding set keeps an exec as (namespace) root from regaining capabilities.
    for cap in range(64):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            break
    if become is not None:
        os.setgroups([])
        os.setgid(become[1])
        os.setuid(become[0])
    check(libc.prctl(_PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "no_new_privs")
    header = (ctypes.c_uint32 * 2)(_CAP_VERSION_3, 0)
    data = (ctypes.c_uint32 * 6)()
    check(libc.capset(header, data), "capset")


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else os.fsencode(text)


def _facts(probe: dict[str, Any]) -> dict[str, Any]:
    """What the code would see: the caller checks each layer it asked for took effect."""
    import socket

    facts: dict[str, Any] = {"uid": os.getuid() if hasattr(os, "getuid") else -1}
    namespaces = {}
    for name in ("mnt", "pid", "net", "ipc"):
        with contextlib.suppress(OSError):
            namespaces[name] = os.readlink("/proc/self/ns/" + name)
    facts["namespaces"] = namespaces
    if hasattr(socket, "if_nameindex"):
        facts["interfaces"] = [name for _, name in socket.if_nameindex()]
    if os.path.isdir("/proc"):
        facts["pids"] = sorted(name for name in os.listdir("/proc") if name.isdigit())
        with contextlib.suppress(OSError), open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                key, _, value = line.partition(":")
                if key in ("CapEff", "CapPrm", "CapBnd", "NoNewPrivs"):
                    facts[key] = value.strip()
    facts["canary_visible"] = os.path.exists(probe["canary"])
    facts["scratch_empty_and_writable"] = all(
        os.path.isdir(place) and not os.listdir(place) and os.access(place, os.W_OK)
        for place in ("/tmp", "/var/tmp", "/dev/shm")
    )
    return facts


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
        if name == "RLIMIT_NPROC" and _host_root():
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


def _host_root() -> bool:
    """Root of the host, whom the kernel exempts from RLIMIT_NPROC; root of a
    user namespace is an ordinary user outside it, and the limit binds."""
    if sys.platform == "win32" or os.getuid() != 0:
        return False
    try:
        with open("/proc/self/uid_map", encoding="ascii") as uid_map:
            return uid_map.read().split()[:2] == ["0", "0"]
    except OSError:
        return True


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
