"""The code sandbox holds against hostile generated code, and the caller is unharmed.

Each hostile program must end as a failed run with the reason recorded. Where
a protection has two layers (the Python audit hook and an operating-system
limit), the OS layer is also tried alone with `python_guards=False`; those
tests are skipped on machines where that layer is not available.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from evidence.errors import SandboxError
from scoring import sandbox
from scoring.sandbox import FunctionCase, SandboxLimits, launch_plan, run_function_cases

FACTORIAL_CASES = (
    FunctionCase((0,), 1),
    FunctionCase((5,), 120),
    FunctionCase((10,), 3628800),
)
FAST = SandboxLimits(wall_timeout_s=1.0, cpu_time_s=5)
OS_ONLY = SandboxLimits(wall_timeout_s=1.0, cpu_time_s=5, python_guards=False)


def run(code: str, limits: SandboxLimits = FAST) -> sandbox.SandboxResult:
    return run_function_cases(code, FACTORIAL_CASES, function_hint="factorial", limits=limits)


def sandbox_processes() -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any("moe-sandbox-" in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


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


def test_writing_outside_is_refused_by_file_permissions_alone(tmp_path: Path) -> None:
    plan = launch_plan()
    if "uid-nobody" not in plan.mechanisms:
        pytest.skip("the code runs as the caller here: only the Python guard stops writes")
    target = tmp_path / "outside" / "pwned.txt"
    target.parent.mkdir(mode=0o755)
    tmp_path.chmod(0o755)
    result = run(f"open({str(target)!r}, 'w').write('pwned')\n", OS_ONLY)
    assert result.load_error is not None and "Permission denied" in result.load_error
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
    workdir = Path(result.stdout_tail.strip())
    assert workdir.name == "work"
    assert not workdir.exists()


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


def test_a_sandbox_that_cannot_start_raises_sandbox_error(monkeypatch: pytest.MonkeyPatch) -> None:
    broken = sandbox.LaunchPlan(
        prefix=(),
        interpreter=os.path.join(os.sep, "nonexistent", "python3"),
        run_as=None,
        clear_groups=False,
        expect_uid=None,
        mechanisms=(),
        network_namespace=False,
    )
    monkeypatch.setattr(sandbox, "launch_plan", lambda: broken)
    with pytest.raises(SandboxError, match="cannot start the code sandbox"):
        run("def factorial(n):\n    return 1\n")
