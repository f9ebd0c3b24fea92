"""The grader cannot be fooled and the host stays hidden (issue 19): every false pass, forged verdict and
escape found by hand becomes a program here that must fail, as the program's failure."""

from __future__ import annotations

import json
import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from autojudge_eval.sandbox import (
    IsolationMode,
    SandboxLimits,
    TestCase,
    TestKind,
    Verdict,
    probe_isolation,
    run_program,
)

FAST = SandboxLimits(cpu_seconds=1.0, wall_seconds=1.0, total_wall_seconds=20.0, fail_fast=False)
MODE = probe_isolation()
needs_namespaces = pytest.mark.skipif(MODE is IsolationMode.RLIMITS_ONLY, reason="no namespace isolation")
REPO = Path(__file__).resolve().parents[2]
DATA = Path("/work/shared/data")

# Looks for the job (a dict with "expected") through every frame and every object the interpreter holds.
STEAL = """
import gc, sys
found = None
frame = sys._getframe()
while frame is not None and found is None:
    for value in list(frame.f_locals.values()) + list(frame.f_globals.values()):
        if isinstance(value, dict) and "expected" in value:
            found = value
    frame = frame.f_back
for obj in gc.get_objects():
    if found is None and isinstance(obj, dict) and "expected" in obj and isinstance(obj["expected"], list):
        found = obj
index = int(sys.stdin.readline() or 0) if found is None else 0
print(found["expected"][0] if found else "none")
"""


def secret_tests(n: int) -> list[TestCase]:
    return [TestCase(str(i), f"secret-{uuid.uuid4().hex}") for i in range(n)]


def test_program_cannot_read_expected_outputs_from_memory():
    result = run_program(STEAL, secret_tests(3), FAST)
    assert [o.verdict for o in result.outcomes] == [Verdict.WRONG_ANSWER] * 3
    assert {o.output for o in result.outcomes} == {"none"}


def test_livecodebench_hidden_tests_stay_hidden_through_grade():
    from datetime import datetime

    from autojudge_eval.benchmarks.livecodebench import CodeProblem, Difficulty, Platform, TestType, grade

    tests = tuple(secret_tests(40))
    problem = CodeProblem("x1", "t", "c", Platform.ATCODER, Difficulty.EASY, "abc", datetime(2025, 1, 1), "",
                          TestType.STDIN, "", tests[:1], tests[1:], "v6")  # fmt: skip
    graded = grade(problem, STEAL, FAST)
    assert not graded.passed and graded.used_private_tests
    assert {o.verdict for o in graded.result.outcomes} == {Verdict.WRONG_ANSWER}


FORGED = [
    ("sandbox_error", '{"event": "sandbox_error", "detail": "x"}'),
    ("finished", '{"event": "finished"}'),
    ("exit0", '{"event": "exit", "code": 0}'),
    ("value", '{"i": 0, "event": "value", "json": "3"}'),
]


@pytest.mark.parametrize(("name", "line"), FORGED, ids=[f[0] for f in FORGED])
def test_forged_events_are_the_programs_failure(name, line):
    code = f"import os\nos.write(1000, b{line!r} + b'\\n')\nos._exit(1)\n"
    stdin = run_program(code, [TestCase("", "3"), TestCase("", "4")], FAST)
    assert {o.verdict for o in stdin.outcomes} == {Verdict.RUNTIME_ERROR}, stdin.outcomes
    script = run_program(code, [TestCase("", kind=TestKind.SCRIPT)], FAST)
    assert script.outcomes[0].verdict is Verdict.RUNTIME_ERROR
    calls = [TestCase(f"{a}", str(a + 1), TestKind.FUNCTIONAL, "inc") for a in (1, 2)]
    fn = f"import os\ndef inc(a):\n    os.write(1000, b{line!r} + b'\\n')\n    os._exit(0)\n"
    functional = run_program(fn, calls, FAST)
    assert all(o.verdict in (Verdict.RUNTIME_ERROR, Verdict.WRONG_ANSWER) for o in functional.outcomes)
    assert not functional.passed


def test_functional_program_cannot_stretch_its_wall_clock():
    """It disables its own timer and keeps writing activity to the event descriptor: the launcher's clock,
    started once per test, still stops it."""
    code = (
        "import os, signal, time\nclass Solution:\n    def f(self, a):\n"
        "        signal.setitimer(signal.ITIMER_REAL, 0)\n        signal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
        '        while True:\n            os.write(1000, b\'{"event": "ready"}\\n\')\n            time.sleep(0.05)\n'
    )
    tests = [TestCase("1", "1", TestKind.FUNCTIONAL, "f")] * 2
    started = time.monotonic()
    result = run_program(code, tests, FAST)
    assert [o.verdict for o in result.outcomes] == [Verdict.TIMEOUT] * 2
    assert time.monotonic() - started < 2 * (FAST.wall_seconds + 1.0) + 3.0


def test_a_late_answer_is_a_timeout_by_the_parents_clock():
    code = (
        "import signal, time\nclass Solution:\n    def f(self, a):\n"
        "        signal.signal(signal.SIGALRM, signal.SIG_IGN)\n        time.sleep(1.15)\n        return a\n"
    )
    result = run_program(code, [TestCase("1", "1", TestKind.FUNCTIONAL, "f")], FAST)
    assert result.outcomes[0].verdict is Verdict.TIMEOUT


@needs_namespaces
def test_the_host_file_system_is_hidden(tmp_path):
    host_file = Path(tempfile.gettempdir()) / f"autojudge-host-{uuid.uuid4().hex}"
    host_file.write_text("host secret")
    targets = [str(REPO), str(REPO / "pyproject.toml"), str(DATA), "/tmp", str(host_file), "/root", "/home",
               "/work", "/etc/passwd", "/proc/1/environ", "/dev/shm", "/sys", "/var"]  # fmt: skip
    code = (
        "import os\n"
        f"for path in {targets!r}:\n"
        "    try:\n"
        "        print(path, sorted(os.listdir(path))[:50] if os.path.isdir(path) else open(path).read(100))\n"
        "    except OSError as exc:\n"
        "        print(path, 'hidden', type(exc).__name__)\n"
    )
    try:
        result = run_program(code, [TestCase("", "-")], FAST)
    finally:
        host_file.unlink()
    lines = result.outcomes[0].output.split("\n")
    assert len(lines) == len(targets), lines
    for target, line in zip(targets, lines, strict=True):
        shown = line[len(target) + 1 :]
        root_python = target == "/root" and shown.startswith("['.pyenv']")  # the interpreter lives there
        assert shown.startswith("hidden") or root_python or shown == "[]", line
    assert "minroot" in result.isolation.split("+")


@needs_namespaces
def test_a_world_writable_host_socket_is_unreachable():
    path = os.path.join(tempfile.gettempdir(), f"autojudge-sock-{uuid.uuid4().hex}")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(path)
        os.chmod(path, 0o777)
        server.listen(1)
        code = (
            "import socket\n"
            "try:\n"
            "    s = socket.socket(socket.AF_UNIX)\n"
            f"    s.connect({path!r})\n"
            "    print('connected')\n"
            "except OSError as exc:\n"
            "    print('refused', exc.errno)\n"
        )
        try:
            result = run_program(code, [TestCase("", "connected")], FAST)
            server.settimeout(0.3)
            with pytest.raises(TimeoutError):
                server.accept()
        finally:
            os.unlink(path)
    assert result.outcomes[0].verdict is Verdict.WRONG_ANSWER
    assert result.outcomes[0].output.startswith("refused")


SYSCALLS = {  # name: a ctypes call that must fail with EPERM (or ENOSYS)
    "io_uring_setup": "libc.syscall(425, 8, ctypes.create_string_buffer(120))",
    "keyctl": "libc.syscall(250, 0, 0, 0, 0, 0)",
    "add_key": "libc.syscall(248, b'user', b'k', b'v', 1, -1)",
    "unshare": "libc.unshare(0x10000000)",
    "unshare_net": "libc.unshare(0x40000000)",
    "setns": "libc.setns(0, 0)",
    "mount": "libc.mount(b'none', b'/sandbox', b'tmpfs', 0, None)",
    "ptrace": "libc.ptrace(16, 1, 0, 0)",
    "bpf": "libc.syscall(321, 0, 0, 0)",
    "perf_event_open": "libc.syscall(298, 0, 0, -1, -1, 0)",
    "userfaultfd": "libc.syscall(323, 0)",
    "memfd_create": "libc.syscall(319, b'x', 0)",
    "af_unix": "libc.socket(1, 1, 0)",
    "af_netlink": "libc.socket(16, 3, 0)",
    "shmget": "libc.shmget(0, 1 << 20, 0o1600)",
    "clone_newuser": "libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)",
}


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the filter is built for x86_64")
def test_seccomp_denies_what_a_grader_never_needs():
    code = "import ctypes, json\nlibc = ctypes.CDLL(None, use_errno=True)\nout = {}\n"
    for name, call in SYSCALLS.items():
        code += f"r = {call}\nout[{name!r}] = (r, ctypes.get_errno())\n"
    code += "print(json.dumps(out))\n"
    result = run_program(code, [TestCase("", "-")], FAST)
    assert "seccomp" in result.isolation.split("+"), result.isolation
    outcome = json.loads(result.outcomes[0].output)
    for name, (ret, errno) in outcome.items():
        assert ret == -1 and errno in (1, 38), (name, ret, errno)  # EPERM / ENOSYS


def test_ordinary_programs_still_work_under_the_filter():
    code = (
        "import threading, subprocess, os, random, math, json\n"
        "t = threading.Thread(target=lambda: None); t.start(); t.join()\n"
        "pid = os.fork()\nif pid == 0:\n    os._exit(0)\nos.waitpid(pid, 0)\n"
        "print(len(os.urandom(4)), math.isqrt(16))\n"
    )
    assert run_program(code, [TestCase("", "4 4")], FAST).passed


MEMORY = {
    "memfd_1600mb": "import os\nfd = os.memfd_create('x')\nfor _ in range(1600):\n    os.write(fd, b'x' * (1 << 20))\n",
    "dev_shm_1600mb": "f = open('/dev/shm/x', 'wb')\nfor _ in range(1600):\n    f.write(b'x' * (1 << 20))\n",
    "workdir_1600mb": "f = open('big', 'wb')\nfor _ in range(1600):\n    f.write(b'x' * (1 << 20))\n",
    "sysv_shm_1600mb": "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nshm = libc.shmget(0, 1600 << 20, 0o1600)\nassert shm >= 0\nlibc.shmat.restype = ctypes.c_void_p\np = libc.shmat(shm, None, 0)\nassert p not in (None, 2**64 - 1)\nctypes.memset(p, 1, 1600 << 20)\n",
    "mmap_shared_1600mb": "import mmap\nm = mmap.mmap(-1, 1600 << 20, flags=mmap.MAP_SHARED)\nfor i in range(0, 1600 << 20, 4096):\n    m[i] = 1\n",
}


@needs_namespaces
@pytest.mark.parametrize("name", sorted(MEMORY))
def test_shared_memory_past_the_limit_fails(name):
    limits = SandboxLimits(
        cpu_seconds=5.0, wall_seconds=5.0, total_wall_seconds=30.0, address_space_bytes=1 << 30
    )
    result = run_program(MEMORY[name] + "print('held')\n", [TestCase("", "held")], limits)
    assert result.outcomes[0].verdict is not Verdict.PASSED, (name, result.outcomes[0])
    assert result.outcomes[0].verdict is not Verdict.SANDBOX_ERROR


@needs_namespaces
def test_memory_across_processes_is_bounded_by_the_cgroup():
    limits = SandboxLimits(
        cpu_seconds=5.0, wall_seconds=8.0, total_wall_seconds=30.0, address_space_bytes=1 << 30
    )
    code = (
        "import os, time\nkids = []\nfor _ in range(2):\n    pid = os.fork()\n    if pid == 0:\n"
        "        b = bytearray(800 << 20)\n        for i in range(0, len(b), 4096):\n            b[i] = 1\n"
        "        time.sleep(3)\n        os._exit(0)\n    kids.append(pid)\n"
        "print(all(os.waitpid(k, 0)[1] == 0 for k in kids))\n"
    )
    result = run_program(code, [TestCase("", "True")], limits)
    if "memcg" not in result.isolation.split("+"):
        pytest.skip(f"no writable memory cgroup here ({result.isolation}); memory is bounded per process")
    assert not result.passed, result.outcomes[0]


def test_only_the_expected_descriptors_are_open():
    code = "import os\nopen_fds = []\nfor fd in range(4096):\n    try:\n        os.fstat(fd)\n        open_fds.append(fd)\n    except OSError:\n        pass\nprint(open_fds)\n"
    assert run_program(code, [TestCase("", "[0, 1, 2, 1000, 1001]")], FAST).passed


def test_signals_to_the_sandbox_processes_change_nothing_but_the_program():
    code = "import os, signal\nfor pid in (1, 2, 3, os.getppid()):\n    for sig in (signal.SIGKILL, signal.SIGSTOP, signal.SIGTERM):\n        try:\n            os.kill(pid, sig)\n        except OSError:\n            pass\nprint(3)\n"
    result = run_program(code, [TestCase("", "3"), TestCase("", "3")], FAST)
    assert all(o.verdict in (Verdict.PASSED, Verdict.RUNTIME_ERROR) for o in result.outcomes)
    assert run_program("print(3)\n", [TestCase("", "3")], FAST).passed


def test_flooding_the_event_descriptor_is_an_output_limit():
    code = 'import os\nwhile True:\n    os.write(1000, b\'{"event": "finished"}\' * 4096)\n'
    result = run_program(code, [TestCase("", kind=TestKind.SCRIPT)], FAST)
    assert result.outcomes[0].verdict in (Verdict.OUTPUT_LIMIT, Verdict.TIMEOUT)


def test_hostile_return_values_fail():
    tests = [TestCase("1", "1", TestKind.FUNCTIONAL, "f")]
    recursive_repr = "class R:\n    def __repr__(self):\n        return repr(self)\nclass Solution:\n    def f(self, a):\n        return R()\n"
    huge = "class Solution:\n    def f(self, a):\n        return 'x' * (64 << 20)\n"
    always_equal = "class E:\n    def __eq__(self, o):\n        return True\nclass Solution:\n    def f(self, a):\n        return E()\n"
    for code in (recursive_repr, huge, always_equal):
        result = run_program(code, tests, FAST)
        assert result.outcomes[0].verdict is not Verdict.PASSED, (code, result.outcomes[0])
        assert result.outcomes[0].verdict is not Verdict.SANDBOX_ERROR


def test_a_real_infrastructure_failure_is_retried_then_recorded(monkeypatch):
    from autojudge_eval.sandbox import TestOutcome, runner

    real, calls = runner._attempt, []

    def flaky(*args):
        calls.append(1)
        if len(calls) == 1:
            return (TestOutcome(Verdict.SANDBOX_ERROR, "simulated launcher crash"),), []
        return real(*args)

    monkeypatch.setattr(runner, "_attempt", flaky)
    assert run_program("print(3)\n", [TestCase("", "3")], FAST).passed and len(calls) == 2
    calls.clear()
    monkeypatch.setattr(
        runner,
        "_attempt",
        lambda *a: (calls.append(1), ((TestOutcome(Verdict.SANDBOX_ERROR, "down"),), []))[1],
    )
    result = run_program("print(3)\n", [TestCase("", "3")], FAST)
    assert result.outcomes[0].verdict is Verdict.SANDBOX_ERROR and len(calls) == 1 + runner.INFRA_RETRIES
