"""The evaluator side of the sandbox: isolation probing, and ``run_program`` / ``run_many``, which start
a launcher per program, ask it to run each test and judge its reports here.

Import these names from ``autojudge_eval.sandbox``. How one run works: the evaluator makes a memory cgroup
and a fresh temporary directory, starts the launcher (``sandbox.session``) in its own session, inside new
namespaces where ``unshare`` works, and hands it the program without any expected output. Then it sends
"run i" with test i's input, reads what the program did and judges it (``sandbox.judge``), test after
test, until the tests end or one fails (``fail_fast``). An outer wall budget bounds the whole
conversation; the launcher's session is killed at the end. See docs/sandbox.md.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from autojudge_eval.errors import ConfigError, SandboxError
from autojudge_eval.sandbox.common import DETAIL_CHARS, Verdict, bounded
from autojudge_eval.sandbox.judge import Judging, judge_report, outcome
from autojudge_eval.sandbox.session import ENDED, TIMEOUT, Launcher, launcher_modules, unshare_prefix
from autojudge_eval.sandbox.values import (
    DEFAULT_LIMITS,
    ExecResult,
    IsolationMode,
    ProgramJob,
    SandboxLimits,
    TestCase,
    TestKind,
    TestOutcome,
)

logger = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------------------
# Isolation modes.


def _mode_works(mode: IsolationMode) -> bool:
    try:
        argv = [*unshare_prefix(mode), "true"]
        return subprocess.run(argv, capture_output=True, timeout=20, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired, SandboxError) as exc:
        logger.debug("isolation probe %s failed: %s", mode.value, exc)
        return False


@functools.lru_cache(maxsize=1)
def probe_isolation() -> IsolationMode:
    """The strongest isolation that works here, probed once per process: namespaces (root) or a user
    namespace (non-root); otherwise RLIMITS_ONLY with a warning. Root never uses a user namespace, where
    the program would keep root's file permissions."""
    mode = IsolationMode.NAMESPACES if os.geteuid() == 0 else IsolationMode.USER_NAMESPACE
    if _mode_works(mode):
        return mode
    logger.warning(
        "sandbox: 'unshare' namespaces are unavailable; generated code runs with resource limits only%s",
        " as a throwaway uid" if os.geteuid() == 0 else " and WITH network access and your file permissions",
    )
    return IsolationMode.RLIMITS_ONLY


def default_workers() -> int:
    return max(1, (os.cpu_count() or 1) - 1)


# ---------------------------------------------------------------------------------------------------------
# The per-program memory cgroup (root, where the memory controller is writable).


@functools.lru_cache(maxsize=1)
def _memory_cgroup_base() -> tuple[str, int] | None:
    """(our memory cgroup's folder, cgroup version) when we may create children in it, else None."""
    if os.geteuid() != 0:
        return None
    try:
        with open("/proc/self/cgroup", encoding="utf-8") as fh:
            lines = [line.rstrip("\n").split(":", 2) for line in fh]
    except OSError:
        return None
    for _hid, controllers, path in lines:
        if "memory" in controllers.split(","):
            found = ("/sys/fs/cgroup/memory" + path, 1)
            break
    else:
        v2 = [path for hid, _, path in lines if hid == "0"]
        found = ("/sys/fs/cgroup" + v2[0], 2) if v2 else None
        if found and "memory" not in _read(os.path.join(found[0], "cgroup.controllers")).split():
            found = None
    if found is None:
        return None
    probe = os.path.join(found[0], f"autojudge-probe-{os.getpid()}")
    try:
        os.mkdir(probe)
        os.rmdir(probe)
    except OSError as exc:
        logger.info("no memory cgroup for the sandbox (%s); memory is bounded per process only", exc)
        return None
    return found


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            return fh.read()
    except OSError:
        return ""


def _make_cgroup(limit: int) -> dict | None:
    """A fresh memory cgroup capped at ``limit`` bytes (swap included) for one program's workers."""
    base = _memory_cgroup_base()
    if base is None:
        return None
    folder, version = base
    path = os.path.join(folder, f"autojudge-sbx-{secrets.token_hex(8)}")
    try:
        os.mkdir(path)
        files = (
            [("memory.limit_in_bytes", limit), ("memory.memsw.limit_in_bytes", limit)]
            if version == 1
            else [("memory.max", limit), ("memory.swap.max", 0)]
        )
        for name, value in files:
            if os.path.exists(os.path.join(path, name)):
                with open(os.path.join(path, name), "w", encoding="utf-8") as fh:
                    fh.write(str(value))
    except OSError as exc:
        logger.warning("cannot set up a memory cgroup at %s: %s", path, exc)
        _remove_cgroup({"dir": path})
        return None
    events = "memory.oom_control" if version == 1 else "memory.events"
    return {"dir": path, "procs": os.path.join(path, "cgroup.procs"), "events": os.path.join(path, events)}


def _remove_cgroup(cgroup: dict | None) -> None:
    if not cgroup:
        return
    for attempt in range(20):  # its last processes may take a moment to be reaped
        try:
            os.rmdir(cgroup["dir"])
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.01 * (attempt + 1))
    logger.warning("could not remove the sandbox cgroup %s", cgroup["dir"])


# ---------------------------------------------------------------------------------------------------------
# One program: job file, launcher process, report.


def _check_tests(tests: tuple[TestCase, ...]) -> None:
    if not tests:
        raise ConfigError("run_program needs at least one TestCase")
    first = tests[0]
    if any((t.kind, t.func_name) != (first.kind, first.func_name) for t in tests):
        raise ConfigError("all tests of one program must share the same kind and func_name")
    if first.kind is TestKind.CALL:
        for number, test in enumerate(tests):
            try:
                json.loads(test.input)
                spec = json.loads(test.expected)
                if not isinstance(spec, dict) or "op" not in spec:
                    raise ValueError("the expected value must be an object with an 'op'")
            except ValueError as exc:
                raise ConfigError(f"call test {number} is not encoded args / an assertion: {exc}") from exc
    if first.kind in (TestKind.FUNCTIONAL, TestKind.CALL) and not first.func_name.isidentifier():
        raise ConfigError(f"functional tests need a func_name that is an identifier, got {first.func_name!r}")
    if first.kind is TestKind.FUNCTIONAL:
        if not first.func_name.isidentifier():
            raise ConfigError(
                f"functional tests need a func_name that is an identifier, got {first.func_name!r}"
            )
        for number, test in enumerate(tests):
            try:
                [json.loads(line) for line in test.input.split("\n")]
                json.loads(test.expected)
            except ValueError as exc:
                raise ConfigError(f"functional test {number} is not JSON lines/JSON: {exc}") from exc


def _job(code: str, tests: tuple[TestCase, ...], limits: SandboxLimits, mode: IsolationMode, workdir: str):
    """What the launcher gets: the program, its kind and limits; never an expected output (and the inputs
    only one test at a time, with the command to run it)."""
    root = os.geteuid() == 0
    kind = tests[0].kind
    return {
        "code": code,
        "kind": kind.value,
        "func_name": tests[0].func_name,
        "n_tests": len(tests),
        "limits": asdict(limits),
        "workdir": workdir,
        "uid": 1_000_000_000 + secrets.randbelow(1_000_000_000) if root else None,  # unique per run
        "nest_userns": mode is IsolationMode.USER_NAMESPACE,
        "lockdown": mode is not IsolationMode.RLIMITS_ONLY,
        "preamble": kind in (TestKind.STDIN, TestKind.FUNCTIONAL),
        "cgroup": None,
    }


def _sandbox_env(workdir: str) -> dict[str, str]:
    """Nothing is inherited: only these variables reach the launcher and the program."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    env.update(PYTHONDONTWRITEBYTECODE="1", HOME=workdir, TMPDIR=workdir)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


def _report_cap(limits: SandboxLimits) -> int:
    """Bound on one report's JSON line: stdout, stderr and events, each escaped at most 6 bytes a byte."""
    return 65536 + 6 * (2 * limits.max_stdout_bytes + limits.max_stderr_bytes)


def _converse(
    launcher: Launcher, job: dict, tests: tuple[TestCase, ...], cgroup: dict | None
) -> tuple[list[TestOutcome], list[str], str]:
    """Hand the launcher its job, then run and judge test 0, 1, ...; (outcomes so far, isolation layers,
    why it stopped: "done", "failed", TIMEOUT or ENDED)."""
    if launcher.send({"modules": launcher_modules(), "job": job}) is None:
        first = launcher.read()
    else:
        first = ENDED
    if not isinstance(first, dict) or "isolation" not in first:
        return [], [], first if isinstance(first, str) else ENDED
    parts = [str(part) for part in first["isolation"]]
    for warning in first.get("warnings", []):
        _warn_once(f"sandbox isolation incomplete: {warning}")
    limits = SandboxLimits(**job["limits"])
    judging = Judging(job["kind"], limits, tuple(t.expected for t in tests))
    outcomes: list[TestOutcome] = []
    layers: list[str] = []
    while len(outcomes) < len(tests):
        index, oom_before = len(outcomes), _oom_kills(cgroup)
        sent = launcher.send({"run": index, "input": tests[index].input})
        report = launcher.read() if sent is None else sent
        if report == TIMEOUT:
            return outcomes, parts + layers, TIMEOUT
        if not isinstance(report, dict) or report.get("i") != index:  # it ended after a program ran
            outcomes.append(outcome(Verdict.RUNTIME_ERROR, "the sandbox's launcher ended during this test"))
            return outcomes, parts + layers, "failed"
        if isinstance(report.get("setup"), dict):
            layers = [str(layer) for layer in report["setup"].get("layers", [])]
        judged = _judge(judging, index, report, _oom_kills(cgroup) > oom_before)
        outcomes += judged
        if limits.fail_fast and any(o.verdict is not Verdict.PASSED for o in judged):
            return outcomes, parts + layers, "failed"
    return outcomes, parts + layers, "done"


def _judge(judging: Judging, index: int, report: dict, oom: bool) -> list[TestOutcome]:
    """``judge_report``, where an unreadable report (its fields are partly the program's) fails the test."""
    try:
        return judge_report(judging, index, report, oom)
    except Exception as exc:  # a bug here must not crash the evaluator, nor read as the sandbox's fault
        logger.warning("sandbox: a report could not be judged (%s: %s)", type(exc).__name__, exc)
        return [outcome(Verdict.RUNTIME_ERROR, f"the program's report could not be judged: {exc}")]


def _oom_kills(cgroup: dict | None) -> int:
    if not cgroup:
        return 0
    text = _read(cgroup["events"])
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill "))


def _fill(outcomes: list[TestOutcome], n_tests: int, reason: str, budget: float, stderr: str, status):
    """Outcomes for every test; the tests that never ran get a verdict that says why."""
    if len(outcomes) >= n_tests:
        return tuple(outcomes[:n_tests])
    if reason == "failed":
        filler = TestOutcome(Verdict.NOT_RUN, "not run: an earlier test failed and fail_fast is on")
    elif reason == TIMEOUT:
        filler = TestOutcome(Verdict.TIMEOUT, f"the outer wall budget of {budget:.1f} s was exhausted")
    else:
        tail = bounded(stderr.strip(), 400)
        filler = TestOutcome(Verdict.SANDBOX_ERROR, f"launcher ended ({reason}, {status}): {tail}")
        logger.warning("sandbox launcher failed: %s", filler.detail)
    return tuple(outcomes) + (filler,) * (n_tests - len(outcomes))


def _kill_uid(uid: int | None, mode: IsolationMode) -> None:
    """Without a PID namespace, kill every process of the run's throwaway uid."""
    kill = shutil.which("kill")
    if mode is IsolationMode.RLIMITS_ONLY and uid is not None and kill:
        subprocess.run([kill, "-KILL", "-1"], user=uid, group=uid, extra_groups=[], check=False)


_WARNED: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning("%s", message)


def _isolation_label(mode: IsolationMode, parts: list[str]) -> str:
    prefix = {IsolationMode.NAMESPACES: ["netns", "pidns", "ipcns"]}
    prefix[IsolationMode.USER_NAMESPACE] = ["userns", "netns", "pidns", "ipcns"]
    if mode is IsolationMode.RLIMITS_ONLY and parts in ([], ["rlimits"]):
        return "rlimits-only"
    return "+".join(prefix.get(mode, []) + (parts or ["launcher-failed"]))


# ---------------------------------------------------------------------------------------------------------
# The public calls.


def run_program(
    code: str,
    tests: Sequence[TestCase],
    limits: SandboxLimits = DEFAULT_LIMITS,
    *,
    isolation: IsolationMode | None = None,
) -> ExecResult:
    """Run ``code`` on every test in a fresh sandbox and judge each test.

    Whatever the program does ends as per-test verdicts; only invalid arguments (ConfigError) or a
    sandbox that cannot start at all (SandboxError) raise.
    """
    tests = tuple(tests)
    _check_tests(tests)
    mode = isolation or probe_isolation()
    if mode is IsolationMode.USER_NAMESPACE and os.geteuid() == 0:
        raise ConfigError(
            "user-namespace isolation as root would keep root's file permissions; use NAMESPACES"
        )
    budget = min(limits.total_wall_seconds, 5.0 + len(tests) * (limits.wall_seconds + 1.0))
    started = time.monotonic()
    for attempt in range(1 + INFRA_RETRIES):
        outcomes, parts = _attempt(code, tests, limits, mode, budget)
        if not any(o.verdict is Verdict.SANDBOX_ERROR for o in outcomes):
            break
        logger.warning("sandbox failure (attempt %d of %d): %s", attempt + 1, 1 + INFRA_RETRIES,
                       next(o.detail for o in outcomes if o.verdict is Verdict.SANDBOX_ERROR))  # fmt: skip
        time.sleep(0.2 * (attempt + 1))
    return ExecResult(outcomes, time.monotonic() - started, _isolation_label(mode, parts))


INFRA_RETRIES = 2  # a real infrastructure failure is retried this often, then recorded as SANDBOX_ERROR


def _attempt(code: str, tests: tuple[TestCase, ...], limits: SandboxLimits, mode: IsolationMode,
             budget: float) -> tuple[tuple[TestOutcome, ...], list[str]]:  # fmt: skip
    if not sys.executable:
        raise SandboxError("sys.executable is empty; cannot start a Python launcher")
    deadline = time.monotonic() + budget
    cgroup = _make_cgroup(limits.address_space_bytes) if mode is not IsolationMode.RLIMITS_ONLY else None
    try:
        with tempfile.TemporaryDirectory(prefix="autojudge-sbx-", ignore_cleanup_errors=True) as workdir:
            job = _job(code, tests, limits, mode, workdir)
            job["cgroup"] = cgroup and {"procs": cgroup["procs"]}
            launcher = Launcher(sys.executable, mode, _sandbox_env(workdir), deadline, _report_cap(limits))
            try:
                outcomes, parts, reason = _converse(launcher, job, tests, cgroup)
            finally:
                status = launcher.close(graceful=True)
                _kill_uid(job["uid"], mode)
    finally:
        _remove_cgroup(cgroup)
    return _fill(outcomes, len(tests), reason, budget, launcher.stderr(), status), _layers(parts, cgroup)


def _layers(parts: list[str], cgroup: dict | None) -> list[str]:
    """The isolation layers in their documented order: the launcher's, then memcg, then seccomp."""
    worker = [p for p in parts if p == "memcg" or p.startswith("seccomp")]
    layers = [p for p in parts if p not in worker]
    if not layers:
        return []
    if cgroup is not None and "memcg-unavailable" not in layers:
        layers.append("memcg" if "memcg" in worker else "memcg-unused")
    return layers + [p for p in worker if p.startswith("seccomp")][:1]


def _sandbox_failure(job: ProgramJob, exc: SandboxError) -> ExecResult:
    detail = bounded(f"sandbox failure: {exc}", DETAIL_CHARS)
    return ExecResult(tuple(TestOutcome(Verdict.SANDBOX_ERROR, detail) for _ in job.tests), 0.0, "none")


def run_many(
    jobs: Iterable[ProgramJob],
    limits: SandboxLimits = DEFAULT_LIMITS,
    workers: int | None = None,
    *,
    isolation: IsolationMode | None = None,
) -> list[ExecResult]:
    """Run many programs through a bounded thread pool (each thread drives one sandbox); results in order.

    A sandbox that fails to start yields SANDBOX_ERROR results for that job; the others are unaffected.
    """
    jobs = list(jobs)
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"workers must be >= 1, got {workers}")

    def one(job: ProgramJob) -> ExecResult:
        try:
            return run_program(job.code, job.tests, limits, isolation=isolation)
        except SandboxError as exc:
            logger.warning("sandbox failed for one job: %s", exc)
            return _sandbox_failure(job, exc)

    if not jobs:
        return []
    with ThreadPoolExecutor(max_workers=min(workers, len(jobs)), thread_name_prefix="sandbox") as pool:
        return list(pool.map(one, jobs))
