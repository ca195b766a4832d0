"""The code sandbox holds against hostile generated code, and the caller is unharmed.

Each hostile program must end as a failed run with the reason recorded, and
nothing it does may reach the host. Where a protection has two layers (the
Python audit hook and an operating-system layer), the OS layer is also tried
alone with `python_guards=False`; those tests are skipped only on machines
where that OS layer does not exist (not Linux, or no permission to make the
namespaces), and the skip names the layer.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from common.errors import SandboxError
from scoring import sandbox
from scoring.sandbox import FunctionCase, SandboxLimits, launch_plan, run_function_cases

FACTORIAL_CASES = (
    FunctionCase((0,), 1),
    FunctionCase((5,), 120),
    FunctionCase((10,), 3628800),
)
FAST = SandboxLimits(wall_timeout_s=1.0, cpu_time_s=5)
OS_ONLY = SandboxLimits(wall_timeout_s=1.0, cpu_time_s=5, python_guards=False)
# Where this session's sandboxes live: other sessions may run sandboxes at the
# same time, and only ours count when looking for processes left behind.
BASE = Path(tempfile.gettempdir()) / f"moe-sandbox-tests-{os.getpid()}"


def run(code: str, limits: SandboxLimits = FAST) -> sandbox.SandboxResult:
    return run_function_cases(
        code, FACTORIAL_CASES, function_hint="factorial", limits=limits, base_dir=BASE
    )


def sandbox_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(BASE) in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def require_private_root(what: str) -> None:
    if "mount-namespace" not in launch_plan().mechanisms:
        pytest.skip(
            f"no mount namespace here (not Linux, or unshare may not make one): {what} "
            "rests on file permissions and the Python guard only"
        )


@pytest.fixture(autouse=True, scope="module")
def sandbox_base() -> Iterator[None]:
    BASE.mkdir()
    BASE.chmod(0o711)  # the unprivileged sandbox user passes through to its own directory
    yield
    shutil.rmtree(BASE)


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    # Only processes the test started count: other tests may leave long-lived
    # helpers such as multiprocessing's resource tracker.
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    yield
    assert sandbox_processes() == []
    assert [p for p in psutil.Process().children(recursive=True) if p.pid not in before] == []


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(0.2)
    yield server
    server.close()


@pytest.fixture
def outside() -> Iterator[Path]:
    """A host directory anyone may write: only the sandbox's own layers keep the code out."""
    place = Path(tempfile.mkdtemp(prefix="moe-outside-"))
    place.chmod(0o1777)
    yield place
    shutil.rmtree(place)


@pytest.fixture
def secret_process() -> Iterator[tuple[int, str]]:
    """A process outside the sandbox with a secret on its command line, like an API key."""
    secret = f"sk-{uuid.uuid4().hex}"
    process = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", f"--api-key={secret}"]
    )
    cmdline = Path(f"/proc/{process.pid}/cmdline")
    deadline = time.monotonic() + 10
    # Until the exec completes, /proc shows the parent's command line.
    while cmdline.exists() and secret not in cmdline.read_text() and time.monotonic() < deadline:
        time.sleep(0.01)
    yield process.pid, secret
    process.kill()
    process.wait()


def assert_no_connection(server: socket.socket) -> None:
    with pytest.raises(TimeoutError):
        server.accept()


def test_a_correct_factorial_passes_every_case() -> None:
    result = run(
        "def factorial(n):\n"
        "    if n == 0:\n"
        "        return 1\n"
        "    return n * factorial(n - 1)\n"
        "\n"
        "print(factorial(5))\n"
    )
    assert result.all_passed
    assert result.passed_cases == 3
    assert result.function_name == "factorial"
    assert [case.returned for case in result.cases] == ["1", "120", "3628800"]
    assert result.stdout_tail == "120\n"
    assert not result.timed_out and result.killed_by is None and result.exit_code == 0
    assert {"fresh-temp-cwd", "scrubbed-env", "process-tree-kill", "audit-hook"} <= set(
        result.isolation.mechanisms
    )


def test_a_wrong_factorial_fails_with_what_it_returned() -> None:
    result = run("def factorial(n):\n    return n * (n - 1) if n > 1 else n\n")
    assert not result.all_passed
    assert [case.passed for case in result.cases] == [False, False, False]
    assert [case.returned for case in result.cases] == ["0", "20", "90"]


def test_a_function_containing_the_hint_is_chosen_over_a_helper() -> None:
    result = run(
        "def helper(x):\n    return x\n\n"
        "def compute_factorial(n):\n    out = 1\n"
        "    for i in range(2, n + 1):\n        out *= i\n    return out\n"
    )
    assert result.function_name == "compute_factorial"
    assert result.all_passed


def test_a_float_result_does_not_count_as_the_integer() -> None:
    result = run("import math\n\ndef factorial(n):\n    return math.gamma(n + 1)\n")
    assert result.passed_cases == 0
    assert result.cases[1].returned == "120.0"


def test_code_that_asks_for_input_still_has_its_function_tested() -> None:
    result = run(
        "def factorial(n):\n    return 1 if n == 0 else n * factorial(n - 1)\n\n"
        "n = int(input('Enter a number: '))\n"
    )
    assert result.load_error is not None and "EOFError" in result.load_error
    assert result.all_passed


def test_an_infinite_loop_is_killed_at_the_wall_timeout() -> None:
    started = time.monotonic()
    result = run("while True:\n    pass\n")
    assert time.monotonic() - started < 4
    assert result.timed_out
    assert result.killed_by == "wall-timeout"
    assert not result.all_passed
    assert all(case.error == "not run: the sandbox timed out" for case in result.cases)


def test_a_hang_inside_the_function_keeps_the_earlier_cases() -> None:
    result = run(
        "def factorial(n):\n    while n == 10:\n        pass\n    return 1 if n < 2 else 120\n"
    )
    assert result.timed_out
    assert [case.passed for case in result.cases] == [True, True, False]


def test_cpu_time_is_limited() -> None:
    limits = SandboxLimits(wall_timeout_s=10.0, cpu_time_s=1)
    if not any(m.startswith("RLIMIT_CPU") for m in run("", limits).isolation.mechanisms):
        pytest.skip("no RLIMIT_CPU on this platform")
    result = run("while True:\n    pass\n", limits)
    assert result.killed_by == "cpu-time-limit"
    assert not result.timed_out


@pytest.mark.parametrize(
    "code",
    [
        "x = bytearray(2 ** 40)\n\ndef factorial(n):\n    return 1\n",
        "chunks = []\nwhile True:\n    chunks.append(b'x' * 10 ** 7)\n",
    ],
    ids=["one-huge-allocation", "growing-allocation"],
)
def test_a_memory_bomb_hits_the_memory_limit(code: str) -> None:
    # A generous wall clock: on a loaded machine filling the address space can
    # take over a second, and this test is about the memory limit, not the clock.
    result = run(code, SandboxLimits(wall_timeout_s=30.0, cpu_time_s=20))
    if "RLIMIT_AS" not in result.isolation.mechanisms:
        pytest.skip("no address-space limit on this platform")
    assert result.load_error is not None and result.load_error.startswith("MemoryError")
    assert not result.all_passed
    assert psutil.Process().memory_info().rss < 1024**3


def test_a_fork_loop_is_refused_by_the_python_guard() -> None:
    result = run("import os\nwhile True:\n    os.fork()\n")
    assert result.load_error is not None and "os.fork is refused" in result.load_error
    assert not result.all_passed


def test_a_fork_loop_is_capped_and_cleaned_up_by_the_os_alone() -> None:
    plan = launch_plan()
    if "pid-namespace" not in plan.mechanisms:
        pytest.skip("no PID namespace here: only the Python guard stops fork loops")
    result = run(
        "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
        OS_ONLY,
    )
    assert result.timed_out
    assert not result.all_passed
    # The autouse fixture checks that none of the forked processes survived.


def test_the_process_count_limit_binds() -> None:
    result = run(
        "import os, time\n"
        "started = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            time.sleep(30)\n"
        "            os._exit(0)\n"
        "        started += 1\n"
        "    except OSError:\n"
        "        break\n"
        "print('forked', started)\n",
        SandboxLimits(wall_timeout_s=3.0, max_processes=16, python_guards=False),
    )
    if "RLIMIT_NPROC" not in result.isolation.mechanisms:
        pytest.skip("RLIMIT_NPROC does not bind here (running as uid 0 without a user to drop to)")
    forked = int(result.stdout_tail.split()[-1])
    assert forked < 16


def test_writing_outside_its_directory_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "outside" / "pwned.txt"
    target.parent.mkdir()
    code = f"open({str(target)!r}, 'w').write('pwned')\n\ndef factorial(n):\n    return 1\n"
    result = run(code)
    assert result.load_error is not None and result.load_error.startswith("PermissionError")
    assert not target.exists()


def test_writing_outside_is_refused_by_the_os_alone(outside: Path) -> None:
    plan = launch_plan()
    if "uid-nobody" not in plan.mechanisms and "mount-namespace" not in plan.mechanisms:
        pytest.skip("no uid switch and no mount namespace here: only the Python guard stops writes")
    target = outside / "pwned.txt"
    result = run(f"open({str(target)!r}, 'w').write('pwned')\n", OS_ONLY)
    assert result.load_error is not None
    assert result.load_error.startswith(("PermissionError", "FileNotFoundError", "OSError"))
    assert not target.exists()


def test_it_may_write_in_its_own_directory_which_is_deleted_afterwards() -> None:
    result = run(
        "import os\n"
        "print(os.getcwd())\n"
        "with open('scratch.txt', 'w') as f:\n"
        "    f.write('120')\n\n"
        "def factorial(n):\n"
        "    return int(open('scratch.txt').read()) if n == 5 else 1\n"
    )
    assert result.cases[1].passed
    assert result.stdout_tail.strip()
    assert not Path(result.stdout_tail.strip(), "scratch.txt").exists()
    assert list(BASE.iterdir()) == []


def test_a_network_socket_is_refused_by_the_python_guard(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    result = run(
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n\n"
        "def factorial(n):\n    return 1\n"
    )
    assert result.load_error is not None and "socket" in result.load_error
    assert_no_connection(listener)


def test_the_network_namespace_alone_keeps_connections_in(listener: socket.socket) -> None:
    if launch_plan().network_namespace is False:
        pytest.skip("no network namespace here: only the Python guard blocks sockets")
    port = listener.getsockname()[1]
    result = run(
        f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=1)\n", OS_ONLY
    )
    assert result.isolation.network == "network-namespace"
    assert result.load_error is not None and result.load_error.startswith("OSError")
    assert_no_connection(listener)


def test_output_is_capped() -> None:
    result = run("while True:\n    print('x' * 10000)\n")
    assert not result.all_passed
    assert len(result.stdout_tail) <= 2000
    if "RLIMIT_FSIZE" in result.isolation.mechanisms:
        assert result.load_error is not None and "File too large" in result.load_error


def test_the_environment_is_scrubbed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    result = run(
        "import os\n\ndef factorial(n):\n"
        "    return sorted(os.environ).count('SECRET_TOKEN') or {0: 1, 5: 120}.get(n, 3628800)\n"
    )
    assert result.all_passed


def test_another_process_command_line_is_invisible(secret_process: tuple[int, str]) -> None:
    pid, secret = secret_process
    require_private_root("the host's /proc")
    # The host sees the secret, as code reading the host's /proc would.
    assert secret in Path(f"/proc/{pid}/cmdline").read_text()
    result = run(
        "import os\n"
        "pids = sorted(n for n in os.listdir('/proc') if n.isdigit())\n"
        "found = []\n"
        f"for pid in pids + ['{pid}', 'self', '1']:\n"
        "    for part in ('cmdline', 'environ'):\n"
        "        try:\n"
        "            data = open('/proc/%s/%s' % (pid, part), 'rb').read()\n"
        "        except OSError:\n"
        "            continue\n"
        "        if b'api-key' in data:\n"
        "            found.append(data.replace(b'\\0', b' ').decode())\n"
        "print('pids', pids)\n"
        "print('found', found)\n",
        OS_ONLY,
    )
    assert secret not in result.stdout_tail + result.stderr_tail
    assert "found []" in result.stdout_tail
    # Its /proc is its own PID namespace's: the harness and nothing else.
    assert "pids ['1']" in result.stdout_tail


def test_files_outside_are_hidden_even_when_world_readable(outside: Path) -> None:
    require_private_root("the host's filesystem")
    secret = f"store-{uuid.uuid4().hex}"
    store = outside / "evidence.duckdb"
    store.write_text(secret, encoding="utf-8")
    store.chmod(0o644)
    checkout = Path(sandbox.__file__).resolve()
    places = [str(store), str(outside), str(checkout), str(checkout.parents[1]), str(Path.home())]
    result = run(
        "import os\n"
        f"for path in {places!r}:\n"
        "    try:\n"
        "        seen = open(path).read() if os.path.isfile(path) else os.listdir(path)\n"
        "        print(path, 'SEEN', seen)\n"
        "    except OSError as exc:\n"
        "        print(path, type(exc).__name__)\n"
        "print('tmp', os.listdir('/tmp'))\n",
        OS_ONLY,
    )
    assert secret not in result.stdout_tail
    assert "SEEN" not in result.stdout_tail
    for path in places:
        assert f"{path} FileNotFoundError" in result.stdout_tail
    assert "tmp []" in result.stdout_tail


# Writes that went round the old Python guards: a descriptor-relative open
# (the hook saw only a relative name), and a shell started through
# _posixsubprocess loaded by _imp.create_builtin (no audit event at all).
ESCAPES = """
import _imp, importlib.machinery, os, sys
def write(path, **kw):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o644, **kw)
    os.write(fd, b'pwned')
    os.close(fd)
def attempt(label, action):
    try:
        action()
        print(label, 'WROTE')
    except OSError as exc:
        print(label, type(exc).__name__)
attempt('host-dir', lambda: write(HOST + '/direct.txt'))
attempt('root', lambda: write('/pwned.txt'))
attempt('parent', lambda: write('../pwned.txt'))
attempt('dir-fd-root', lambda: write('pwned.txt', dir_fd=os.open('/', os.O_RDONLY)))
attempt('dir-fd-parent', lambda: write('pwned.txt', dir_fd=os.open('..', os.O_RDONLY)))
attempt('dir-fd-host', lambda: write('pwned.txt', dir_fd=os.open(HOST, os.O_RDONLY)))
try:
    posix = _imp.create_builtin(importlib.machinery.ModuleSpec('_posixsubprocess', None))
except Exception:  # a shared library in this interpreter, which the guard may refuse
    import _posixsubprocess as posix
script = 'echo sh-ran; echo pwned > %s/sh.txt; echo pwned > /tmp/%s' % (HOST, NAME)
argv = [b'/bin/sh', b'-c', script.encode()]
errors_read, errors_write = os.pipe()
head = [argv, [b'/bin/sh'], True, (), None, [b'PATH=/usr/bin:/bin'], -1, -1, -1, -1, -1, -1,
        errors_read, errors_write, True, False]
# fork_exec's signature changes between Python versions.
for tail in ([-1, None, None, -1, -1, None, False], [-1, None, None, -1, -1, None],
             [None, None, -1, -1, None]):
    try:
        pid = posix.fork_exec(*head, *tail)
        break
    except TypeError:
        continue
os.close(errors_write)
os.waitpid(pid, 0)
sys.stdout.flush()
"""


@pytest.mark.parametrize("limits", [FAST, OS_ONLY], ids=["with-python-guards", "os-only"])
def test_writes_outside_its_tmpfs_land_nowhere(outside: Path, limits: SandboxLimits) -> None:
    require_private_root("writing to world-writable host directories")
    name = f"pwned-{uuid.uuid4().hex}"
    result = run(f"HOST = {str(outside)!r}\nNAME = {name!r}\n" + ESCAPES, limits)
    out = result.stdout_tail
    # The exec itself worked (it is contained, not prevented), unless the
    # interpreter has _posixsubprocess as a shared library the guard refused.
    refused = "importing _posixsubprocess is refused" in (result.load_error or "")
    assert "sh-ran" in out or (refused and limits.python_guards), result.load_error
    assert "WROTE" not in out
    for label in ("host-dir", "root", "parent", "dir-fd-root", "dir-fd-parent", "dir-fd-host"):
        assert f"{label} " in out
    assert list(outside.iterdir()) == []
    assert not Path(tempfile.gettempdir(), name).exists()
    assert not Path("/tmp", name).exists()
    # The workdir's parent on the host (the sandbox's root) is gone, with nothing beside it.
    assert list(BASE.iterdir()) == []


def test_scratch_files_do_not_outlive_the_run() -> None:
    require_private_root("/tmp, /var/tmp and /dev/shm of the host")
    name = f"left-{uuid.uuid4().hex}"
    places = ["/tmp", "/var/tmp", "/dev/shm", "."]
    wrote = run(
        "import os\n"
        f"for place in {places!r}:\n"
        f"    with open(os.path.join(place, {name!r}), 'w') as f:\n"
        "        f.write('left behind')\n"
        "print('wrote', len(os.listdir('/tmp')) + len(os.listdir('/dev/shm')))\n",
        OS_ONLY,
    )
    assert wrote.load_error is None, wrote.load_error
    assert "wrote 2" in wrote.stdout_tail
    for place in places[:3]:
        assert not Path(place, name).exists()
    found = run(
        "import os\n"
        f"print('found', [os.path.exists(os.path.join(p, {name!r})) for p in {places!r}])\n",
        OS_ONLY,
    )
    assert "found [False, False, False, False]" in found.stdout_tail


def test_a_large_write_is_cut_by_the_size_limits() -> None:
    require_private_root("the total written to /tmp, /var/tmp and /dev/shm")
    limits = SandboxLimits(wall_timeout_s=20.0, cpu_time_s=15, python_guards=False)
    result = run(
        "import errno, json, os\n"
        "written = {}\n"
        "try:\n"
        "    with open('one-big-file', 'wb') as f:\n"
        "        f.write(b'x' * 10_000_000)\n"
        "except OSError as exc:\n"
        "    written['big-error'] = errno.errorcode[exc.errno]\n"
        "written['big-size'] = os.path.getsize('one-big-file')\n"
        "chunk = b'x' * 200_000\n"
        "for place in ('/tmp', '/var/tmp', '/dev/shm', '.'):\n"
        "    for i in range(500):  # 100 MB a place, 400 MB in all if nothing stops it\n"
        "        try:\n"
        "            with open(os.path.join(place, 'fill%d' % i), 'wb') as f:\n"
        "                f.write(chunk)\n"
        "        except OSError:\n"
        "            break\n"
        "    written[place] = sum(\n"
        "        os.path.getsize(os.path.join(place, n)) for n in os.listdir(place))\n"
        "print(json.dumps(written))\n",
        limits,
    )
    written = json.loads(result.stdout_tail.strip().splitlines()[-1])
    # One file stops at the file-size limit; each tmpfs at its size.
    assert written["big-error"] == "EFBIG"
    assert written["big-size"] <= limits.max_output_bytes
    for place in ("/tmp", "/var/tmp", "/dev/shm", "."):
        assert 0 < written[place] <= limits.scratch_bytes


def test_ipc_objects_do_not_outlive_the_run() -> None:
    if "ipc-namespace" not in launch_plan().mechanisms:
        pytest.skip(
            "no IPC namespace here (not Linux, or unshare may not make one): "
            "System V objects the code makes outlive the run"
        )
    key = 0x4D000000 + uuid.uuid4().int % 0xFFFFFF
    result = run(
        "import ctypes\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        f"print('segment', libc.shmget({key}, 1 << 20, 0o1666))\n",  # IPC_CREAT | 0666
        OS_ONLY,
    )
    assert int(result.stdout_tail.split()[-1]) >= 0, result.load_error  # it was made, inside
    table = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
    left = [row.split()[1] for row in table if int(row.split()[0]) == key]
    for shmid in left:
        subprocess.run(["ipcrm", "-m", shmid], check=False)
    assert left == []


FORGED_RECORDS = [
    {"event": "ready", "mechanisms": [], "python": [3, 11, 0]},
    {"event": "loaded", "error": None, "function": "factorial"},
    *({"event": "call", "value": v, "repr": repr(v), "error": None, "passed": True} for v in
      (1, 120, 3628800)),
    {"event": "done"},
]  # fmt: skip


@pytest.mark.parametrize("limits", [FAST, OS_ONLY], ids=["with-python-guards", "os-only"])
def test_a_printed_result_line_does_not_pass_a_failing_case(limits: SandboxLimits) -> None:
    forged = "\n" + "\n".join(json.dumps(record) for record in FORGED_RECORDS) + "\n"
    result = run(
        "import os, sys, threading\n"
        f"FORGED = {forged!r}\n"
        "def spray():\n"
        "    print(FORGED)\n"
        "    print(FORGED, file=sys.stderr)\n"
        "    sys.stdout.flush()\n"
        "    for fd in range(64):  # the answer pipe is among them\n"
        "        try:\n"
        "            os.write(fd, FORGED.encode())\n"
        "        except OSError:\n"
        "            pass\n"
        "spray()\n"
        "threading.Thread(target=lambda: [spray() for _ in range(3)], daemon=True).start()\n"
        "\n"
        "def factorial(n):\n"
        "    spray()\n"
        "    return 0\n",
        limits,
    )
    assert "3628800" in result.stdout_tail  # the forgeries went out
    assert result.function_name == "factorial"
    assert [case.returned for case in result.cases] == ["0", "0", "0"]
    assert result.passed_cases == 0


# The layers that only the launch plan (namespaces, private root, privileges) gives.
OS_LAYERS = {layer for layer in sandbox._LAYERS if not layer.startswith("RLIMIT_")}


def test_the_module_documents_every_layer_it_reports() -> None:
    # The docstring names each layer as `a-layer`; a layer added or dropped in one
    # place and not the other fails here.
    assert set(re.findall(r"`([a-z]+(?:-[a-z]+)+)`", sandbox.__doc__ or "")) == OS_LAYERS


def test_the_result_says_which_layers_are_missing_here() -> None:
    isolation = run("def factorial(n):\n    return 1\n").isolation
    # Every layer of the full set is either in effect or listed as missing, never both.
    assert set(isolation.missing) == set(sandbox._LAYERS) - set(isolation.mechanisms)
    detail = isolation.as_detail()
    assert detail["missing"] == list(isolation.missing)
    assert detail["filesystem"] == isolation.filesystem
    plan = launch_plan()
    if "mount-namespace" in plan.mechanisms and "uid-nobody" in plan.mechanisms:
        assert isolation.missing == ()
        assert isolation.filesystem == "private-root"


def test_a_weaker_plan_records_what_it_lacks(monkeypatch: pytest.MonkeyPatch) -> None:
    # No operating-system layer: as on a machine with no namespaces and no user to switch to.
    weak = sandbox.LaunchPlan(
        interpreter=sys.executable,
        mechanisms=("fresh-temp-cwd", "scrubbed-env", "process-tree-kill"),
    )
    monkeypatch.setattr(sandbox, "launch_plan", lambda: weak)
    result = run("def factorial(n):\n    return 1 if n < 2 else n * factorial(n - 1)\n")
    assert result.all_passed
    isolation = result.isolation
    # Every layer the namespaces and the user switch give is missing; the harness's
    # own rlimits remain.
    assert set(isolation.missing) >= OS_LAYERS
    assert isolation.filesystem == "host-as-caller"
    assert isolation.network == "audit-hook"


def test_a_sandbox_that_cannot_start_raises_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = sandbox.LaunchPlan(
        interpreter=os.path.join(os.sep, "nonexistent", "python3"), mechanisms=()
    )
    monkeypatch.setattr(sandbox, "launch_plan", lambda: broken)
    with pytest.raises(SandboxError, match="cannot start the code sandbox"):
        run("def factorial(n):\n    return 1\n")
