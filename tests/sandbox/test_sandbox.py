"""Sandbox tests: hostile programs end as failed tests with the right verdict, and the evaluator survives.

Run with ``-s`` to see the containment table (program, verdict, seconds to contain).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from autojudge_eval.errors import ConfigError
from autojudge_eval.sandbox import (
    CachedExecutor,
    ExecResult,
    IsolationMode,
    ProgramJob,
    SandboxLimits,
    TestCase,
    TestKind,
    Verdict,
    behaviour_signature,
    compare_stdout,
    digest_tests,
    probe_isolation,
    run_many,
    run_program,
    same_behaviour,
)

FAST = SandboxLimits(cpu_seconds=1.0, wall_seconds=1.0, total_wall_seconds=20.0, fail_fast=False)
MODE = probe_isolation()
NAMESPACED = MODE is not IsolationMode.RLIMITS_ONLY
OTHER_UID = NAMESPACED or os.geteuid() == 0  # the program cannot signal or read our processes
needs_namespaces = pytest.mark.skipif(not NAMESPACED, reason="no namespace isolation here (rlimits only)")
REPO = Path(__file__).resolve().parents[2]
ADD = "a, b = map(int, input().split())\nprint(a + b)\n"
CONTAINMENT: list[list] = []  # [name, verdict, seconds to contain, contained]

HOSTILE = [
    ("loop_forever", "while True:\n    pass\n", {Verdict.TIMEOUT}),
    ("fork_bomb", "import os\nprint(os.getuid(), flush=True)\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n", {Verdict.TIMEOUT}),
    ("fork_bomb_raw", "import os\nprint(os.getuid(), flush=True)\nwhile True:\n    os.fork()\n", {Verdict.RUNTIME_ERROR, Verdict.TIMEOUT}),
    ("allocate_50gb", "x = bytearray(50 * 10**9)\n", {Verdict.MEMORY_LIMIT}),
    ("print_1gb", "import sys\nc = 'x' * (1 << 20)\nfor _ in range(1024):\n    sys.stdout.write(c)\n", {Verdict.OUTPUT_LIMIT}),
    ("sleep_past_wall", "import time\ntime.sleep(60)\n", {Verdict.TIMEOUT}),
    ("exit_silently", "exit()\n", {Verdict.WRONG_ANSWER}),
    ("sys_exit_3", "import sys\nsys.exit(3)\n", {Verdict.RUNTIME_ERROR}),
]  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def containment_report():
    yield
    hostile = [row for row in CONTAINMENT if row[0] != "pool_of_20"]
    contained = sum(1 for row in hostile if row[3])
    print(f"\nsandbox containment ({MODE.value}): tried {len(hostile)}, contained {contained}")
    for name, verdict, seconds, ok in CONTAINMENT:
        print(f"  {name:22s} {verdict:14s} {seconds:6.2f} s  {'contained' if ok else 'NOT CONTAINED'}")


def contain(name: str, code: str, expected: set[Verdict], test: TestCase | None = None) -> ExecResult:
    """Run one hostile program; it must end as a failed test with an expected verdict and a reason."""
    started = time.monotonic()
    result = run_program(code, [test or TestCase("1 2", "3")], FAST)
    outcome, row = (
        result.outcomes[0],
        [name, result.outcomes[0].verdict.value, time.monotonic() - started, False],
    )
    CONTAINMENT.append(row)
    assert outcome.verdict in expected, (name, outcome)
    assert outcome.detail, f"{name}: a failed test must say why"
    assert not result.passed
    row[3] = True
    return result


def pids_of_uid(uid: int) -> list[int]:
    """Processes still running under one (throwaway sandbox) uid."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            uid_line = next(ln for ln in (entry / "status").read_text().splitlines() if ln.startswith("Uid:"))
        except (OSError, StopIteration):
            continue
        if int(uid_line.split()[1]) == uid:
            pids.append(int(entry.name))
    return pids


@pytest.mark.parametrize(("name", "code", "expected"), HOSTILE, ids=[h[0] for h in HOSTILE])
def test_hostile_program_is_contained(name, code, expected):
    result = contain(name, code, expected)
    if name.startswith(("loop", "sleep", "fork_bomb")):
        assert result.total_seconds < FAST.wall_seconds + 3.0
    if os.geteuid() == 0 and name.startswith("fork_bomb"):  # the bomb printed its throwaway uid first
        assert pids_of_uid(int(result.outcomes[0].output.split()[0])) == []


def test_kill_parent_leaves_the_evaluator_alive():
    expected = {Verdict.RUNTIME_ERROR} if OTHER_UID else {Verdict.RUNTIME_ERROR, Verdict.SANDBOX_ERROR}
    contain("kill_parent", "import os\nos.kill(os.getppid(), 9)\nprint(3)\n", expected)
    if OTHER_UID:  # with the same uid and no PID namespace, kill(-1) would hit the test runner itself
        # kill(-1) reaches only the program's own processes (never its caller): the sandbox's runner and
        # launcher run as another uid, so the program carries on and its answer is judged as usual.
        result = run_program("import os\nos.kill(-1, 9)\nprint(3)\n", [TestCase("", "3")], FAST)
        assert result.outcomes[0].verdict in {Verdict.PASSED, Verdict.RUNTIME_ERROR}, result.outcomes[0]
    assert run_program(ADD, [TestCase("1 2", "3")], FAST).passed


@needs_namespaces
def test_writes_outside_the_working_directory_fail():
    target = Path(tempfile.gettempdir()) / f"autojudge-escape-{uuid.uuid4().hex}"
    sibling = f"autojudge-escape-{uuid.uuid4().hex}"
    code = (
        f"import os\nopen({str(target)!r}, 'w').write('x')\n"
        f"open(os.path.join(os.path.dirname(os.getcwd()), {sibling!r}), 'w').write('x')\n"
    )
    try:
        contain("write_outside", code, {Verdict.RUNTIME_ERROR})
        assert not target.exists()
        assert not (Path(tempfile.gettempdir()) / sibling).exists()
    finally:
        target.unlink(missing_ok=True)
        (Path(tempfile.gettempdir()) / sibling).unlink(missing_ok=True)


def test_writes_inside_the_working_directory_work():
    code = "open('scratch.txt', 'w').write('3')\nprint(open('scratch.txt').read())\n"
    assert run_program(code, [TestCase("", "3")], FAST).passed


@needs_namespaces
def test_no_connection_reaches_a_local_listener():
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        code = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\nprint(3)\n"
        contain("socket_localhost", code, {Verdict.RUNTIME_ERROR})
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()


@needs_namespaces
def test_external_network_fails_fast():
    code = "import socket\nsocket.create_connection(('203.0.113.7', 80), timeout=5)\nprint(3)\n"
    result = contain("socket_external", code, {Verdict.RUNTIME_ERROR})
    assert result.outcomes[0].elapsed < 2.0


def test_environment_is_scrubbed(monkeypatch):
    secret = f"hunter2-{uuid.uuid4().hex}"
    monkeypatch.setenv("AUTOJUDGE_FAKE_SECRET", secret)
    code = (
        "import os\n"
        f"s = {secret!r}\n"
        "env = [k for k, v in os.environ.items() if s in v]\n"
        "procs = []\n"
        "for pid in filter(str.isdigit, os.listdir('/proc') if os.path.isdir('/proc') else []):\n"
        "    try:\n"
        "        procs += [pid] if s.encode() in open(f'/proc/{pid}/environ', 'rb').read() else []\n"
        "    except OSError:\n"
        "        pass\n"
        "print('env', env or 'clean')\nprint('proc', procs or 'clean')\n"
    )
    result = contain("read_environment", code, {Verdict.WRONG_ANSWER}, TestCase("", secret))
    env_line, proc_line = result.outcomes[0].output.split("\n")
    assert env_line == "env clean"
    if OTHER_UID:
        assert proc_line == "proc clean"


def test_earlier_results_survive_hostile_programs():
    first = run_program(ADD, [TestCase("1 2", "3"), TestCase("5 5", "10")], FAST)
    snapshot = first.to_dict()
    run_program("import os\nos.kill(os.getppid(), 9)\n", [TestCase("", "")], FAST)
    run_program("while True:\n    pass\n", [TestCase("", "")], FAST)
    assert first.to_dict() == snapshot and first.passed
    assert run_program(ADD, [TestCase("2 2", "4")], FAST).passed


def test_pool_runs_twenty_programs_concurrently():
    kinds = [(ADD, Verdict.PASSED)] * 10 + [("print(0)\n", Verdict.WRONG_ANSWER)] * 4
    kinds += [("import time\ntime.sleep(0.5)\nprint(3)\n", Verdict.PASSED)] * 3
    kinds += [("while True:\n    pass\n", Verdict.TIMEOUT), ("def f(:\n", Verdict.COMPILE_ERROR)]
    kinds += [("import os\nwhile True:\n    os.fork()\n", None)]
    jobs = [ProgramJob(code, (TestCase("1 2", "3"),)) for code, _ in kinds]
    started = time.monotonic()
    results = run_many(jobs, FAST, workers=8)
    seconds = time.monotonic() - started
    assert len(results) == 20
    for (code, verdict), result in zip(kinds, results, strict=True):
        if verdict is not None:
            assert result.outcomes[0].verdict is verdict, (code, result.outcomes[0])
    assert results[-1].outcomes[0].verdict in {Verdict.RUNTIME_ERROR, Verdict.TIMEOUT}
    CONTAINMENT.append(["pool_of_20", "all as expected", seconds, True])
    assert seconds < 20.0


def test_stdin_grading_and_fail_fast():
    tests = [TestCase("1 2", "3"), TestCase("2 2", "5"), TestCase("3 3", "6")]
    full = run_program(ADD, tests, FAST)
    assert [o.verdict for o in full.outcomes] == [Verdict.PASSED, Verdict.WRONG_ANSWER, Verdict.PASSED]
    assert full.outcomes[1].output == "4" and "expected '5'" in full.outcomes[1].detail
    quick = run_program(ADD, tests, SandboxLimits(cpu_seconds=1.0, wall_seconds=1.0))
    assert [o.verdict for o in quick.outcomes] == [Verdict.PASSED, Verdict.WRONG_ANSWER, Verdict.NOT_RUN]
    assert NAMESPACED == full.isolation.startswith(("netns", "userns"))


def test_compile_error_marks_every_test():
    result = run_program("def f(:\n", [TestCase("", "1"), TestCase("", "2")], FAST)
    assert [o.verdict for o in result.outcomes] == [Verdict.COMPILE_ERROR] * 2
    assert "SyntaxError" in result.outcomes[0].detail


def test_functional_calls_restart_after_a_crash():
    tests = [
        TestCase(f"{a}\n{b}", str(a + b), TestKind.FUNCTIONAL, "addTwo") for a, b in [(1, 2), (5, 5), (2, 2)]
    ]
    ok = "class Solution:\n    def addTwo(self, a: int, b: int) -> int:\n        return a + b\n"
    assert run_program(ok, tests, FAST).passed
    crash = "import os\nclass Solution:\n    def addTwo(self, a, b):\n        if a == 5:\n            os._exit(0)\n        return (a + b,)[0]\n"
    result = run_program(crash, tests, FAST)
    assert [o.verdict for o in result.outcomes] == [Verdict.PASSED, Verdict.RUNTIME_ERROR, Verdict.PASSED]
    hang = "class Solution:\n    def addTwo(self, a, b):\n        while a == 5:\n            pass\n        return a + b\n"
    result = run_program(hang, tests, FAST)
    assert [o.verdict for o in result.outcomes] == [Verdict.PASSED, Verdict.TIMEOUT, Verdict.PASSED]
    missing = run_program("x = 1\n", tests, FAST)
    assert {o.verdict for o in missing.outcomes} == {Verdict.RUNTIME_ERROR}
    assert "addTwo" in missing.outcomes[0].detail


def test_script_kind_follows_human_eval():
    script = [TestCase("", kind=TestKind.SCRIPT)]
    assert run_program("assert 1 + 1 == 2\n", script, FAST).passed
    cases = {"assert 1 == 2\n": Verdict.WRONG_ANSWER, "1 / 0\n": Verdict.RUNTIME_ERROR}
    cases |= {
        "import os\nos._exit(0)\nassert False\n": Verdict.RUNTIME_ERROR,
        "exit()\n": Verdict.RUNTIME_ERROR,
    }
    for code, verdict in cases.items():
        assert run_program(code, script, FAST).outcomes[0].verdict is verdict, code


def test_outer_budget_bounds_a_program():
    limits = SandboxLimits(cpu_seconds=1.0, wall_seconds=1.0, total_wall_seconds=1.5, fail_fast=False)
    result = run_program("import time\ntime.sleep(60)\n", [TestCase("", "1")] * 4, limits)
    assert result.total_seconds < 4.0
    assert {o.verdict for o in result.outcomes} == {Verdict.TIMEOUT}
    assert "outer wall budget" in result.outcomes[-1].detail


def test_rlimits_only_mode_still_runs_programs():
    result = run_program(ADD, [TestCase("1 2", "3")], FAST, isolation=IsolationMode.RLIMITS_ONLY)
    assert result.passed
    assert result.isolation in ("rlimits-only", "uid-drop+rlimits") or (
        "rlimits" in result.isolation.split("+") and not result.isolated
    )


def test_bad_arguments_raise_config_error():
    with pytest.raises(ConfigError):
        run_program("print(1)", [], FAST)
    with pytest.raises(ConfigError):
        run_program("print(1)", [TestCase("1"), TestCase("[1]", "1", TestKind.FUNCTIONAL, "f")], FAST)
    with pytest.raises(ConfigError):
        SandboxLimits(wall_seconds=0)
    if os.geteuid() == 0:
        with pytest.raises(ConfigError):
            run_program("print(1)", [TestCase("")], FAST, isolation=IsolationMode.USER_NAMESPACE)


def test_launcher_loads_only_the_standard_library_and_its_siblings():
    """The program runs in a fork of a fresh interpreter that loaded only the launcher's four modules
    (compiled code handed over by the evaluator): no package __init__ (lm-eval), no evaluator-side module
    (runner, judge, session, values), and no folder of ours on sys.path."""
    code = (
        "import sys\n"
        "print(*sorted(m for m in sys.modules if m.split('.')[0] in ('autojudge_eval', 'lm_eval', 'torch')))\n"
        "print(any(p.rstrip('/').endswith('autojudge_eval') for p in sys.path))\n"
    )
    output = run_program(code, [TestCase("", "-")], FAST).outcomes[0].output.split("\n")
    siblings = ["child", "common", "launcher", "mounts"]
    expected = [
        "autojudge_eval",
        "autojudge_eval.sandbox",
        *(f"autojudge_eval.sandbox.{m}" for m in siblings),
    ]
    assert output == [" ".join(expected), "False"]


def test_sandbox_modules_do_not_import_lm_eval():
    """The evaluator side of the sandbox imports no ML library (the grader runs in light processes too)."""
    script = (
        "import sys\n"
        "import autojudge_eval.sandbox\n"
        "print(sorted(m for m in ('lm_eval', 'torch', 'datasets', 'transformers') if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"


def test_compare_stdout_follows_livecodebench():
    assert compare_stdout("3 \n4\n\n", "3\n4")[0]
    assert compare_stdout("1.0 2", "1.00 2.0")[0]
    assert not compare_stdout("0.3333", "0.33333")[0]
    assert not compare_stdout("1\n2", "1")[0]
    assert not compare_stdout("Yes", "yes")[0]


def test_behaviour_signature_and_same_behaviour():
    tests = [TestCase("1 2", "3"), TestCase("2 2", "5")]
    a = run_program(ADD, tests, FAST)
    b = run_program("a, b = map(int, input().split())\nprint(b + a)\n", tests, FAST)
    c = run_program("print(4)\n", tests, FAST)
    assert same_behaviour(a, b) and behaviour_signature(a) == behaviour_signature(b)
    assert not same_behaviour(a, c)
    assert same_behaviour(a, c, pass_fail_only=True)


def test_cached_executor_hits_and_persists(tmp_path):
    tests = (TestCase("1 2", "3"),)
    cache = CachedExecutor(FAST, path=tmp_path / "cache.jsonl", workers=2)
    first = cache.run(ADD, tests)
    again = cache.run_many([ProgramJob(ADD, tests), ProgramJob("print(3)\n", tests)])
    assert (cache.hits, cache.misses) == (1, 2)
    assert again[0] == first and again[1].passed
    with (tmp_path / "cache.jsonl").open("a") as fh:
        fh.write('{"key": "cut sho')
    reloaded = CachedExecutor(FAST, path=tmp_path / "cache.jsonl")
    assert reloaded.run(ADD, tests, tests_key=digest_tests(tests)) == first
    assert reloaded.hits == 1 and reloaded.misses == 0


def test_user_namespace_mode_as_an_unprivileged_user():
    """USER_NAMESPACE is what non-root users get; check it as nobody with the system Python."""
    python, setpriv = "/usr/bin/python3", shutil.which("setpriv")
    if os.geteuid() != 0 or not setpriv or not os.path.exists(python):
        pytest.skip("needs root, setpriv and /usr/bin/python3 to impersonate an unprivileged user")
    script = (
        "import sys, json, types\n"  # a bare package: only errors.py and the sandbox modules get imported
        f"pkg = types.ModuleType('autojudge_eval'); pkg.__path__ = [{str(REPO / 'autojudge_eval')!r}]\n"
        "sys.modules['autojudge_eval'] = pkg\n"
        "from autojudge_eval.sandbox import *\n"
        "L = SandboxLimits(cpu_seconds=1, wall_seconds=1, fail_fast=False)\n"
        "codes = ['import os\\nwhile True:\\n    try:\\n        os.fork()\\n    except OSError:\\n        pass\\n',\n"
        '         \'open("/tmp/autojudge-userns-escape", "w").write("x")\\n\', \'print(1 + 2)\\n\',\n'
        "         'import socket\\nsocket.create_connection((\"127.0.0.1\", 9), timeout=2)\\n']\n"
        "rs = [run_program(c, [TestCase('', '3')], L) for c in codes]\n"
        "print(json.dumps([rs[0].isolation] + [r.outcomes[0].verdict.value for r in rs]))\n"
    )
    argv = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", script]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False, cwd="/")
    if proc.returncode != 0 and ("ModuleNotFoundError" in proc.stderr or "Permission denied" in proc.stderr):
        pytest.skip(f"the package is not importable as nobody with {python}: {proc.stderr[-200:]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    isolation, fork_bomb, write, ok, net = json.loads(proc.stdout.strip().splitlines()[-1])
    if isolation == "rlimits-only":
        pytest.skip("unprivileged user namespaces are disabled on this machine")
    assert isolation.startswith("userns+netns+pidns")
    assert fork_bomb == "timeout" and write == "runtime_error" and ok == "passed" and net == "runtime_error"
    assert not Path("/tmp/autojudge-userns-escape").exists()
