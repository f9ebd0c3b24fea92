"""The evaluator side of the sandbox: isolation probing, and ``run_program`` / ``run_many``, which start a
launcher per program and turn its report into per-test outcomes.

Import these names from ``autojudge_eval.sandbox``. How one run works: the evaluator writes a job file into a
fresh temporary directory and starts ``sandbox/launcher.py`` by path in its own session, inside new
namespaces where ``unshare`` works. It enforces an outer wall budget and kills the launcher's whole session
on overrun; it is never the candidate's parent. See docs/sandbox.md.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import logging
import marshal
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from autojudge_eval.errors import ConfigError, SandboxError
from autojudge_eval.sandbox.common import DETAIL_CHARS, OUTPUT_CHARS, Verdict, bounded, parse_events, watch
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

LAUNCHER_PATH = Path(__file__).with_name("launcher.py")
# `python -c` keeps this folder off sys.path (a script run by path would put it first, where a module of
# ours could shadow the standard library); runpy runs the launcher file as __main__.
_BOOTSTRAP = (
    "import runpy, sys; sys.path[:] = [p for p in sys.path if p]; "
    "runpy.run_path(sys.argv[1], run_name='__main__')"
)
_UNSHARE_FLAGS = ("--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")


# ---------------------------------------------------------------------------------------------------------
# Isolation modes.


def _unshare_prefix(mode: IsolationMode) -> tuple[str, ...]:
    exe = shutil.which("unshare")
    if mode is IsolationMode.RLIMITS_ONLY:
        return ()
    if exe is None:
        raise SandboxError(f"isolation {mode.value} needs util-linux 'unshare' on PATH; it was not found")
    user = ("--user", "--map-root-user") if mode is IsolationMode.USER_NAMESPACE else ()
    return (exe, *user, *_UNSHARE_FLAGS, "--")


def _mode_works(mode: IsolationMode) -> bool:
    try:
        argv = [*_unshare_prefix(mode), "true"]
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


@functools.lru_cache(maxsize=1)
def _runner_modules() -> tuple[tuple[str, str], ...]:
    """common.py and child.py compiled once per evaluator process and marshalled (base64), so the sandbox's
    runner neither compiles them nor needs to see the checkout."""
    found = []
    for name in ("common", "child"):
        path = LAUNCHER_PATH.with_name(f"{name}.py")
        code = compile(path.read_text(encoding="utf-8"), f"<sandbox {name}>", "exec")
        found.append((f"autojudge_eval.sandbox.{name}", base64.b64encode(marshal.dumps(code)).decode()))
    return tuple(found)


def _job(code: str, tests: tuple[TestCase, ...], limits: SandboxLimits, mode: IsolationMode, workdir: str):
    root = os.geteuid() == 0
    kind = tests[0].kind
    return {
        "code": code,
        "kind": kind.value,
        "func_name": tests[0].func_name,
        "inputs": [t.input for t in tests],
        "expected": [t.expected for t in tests],
        "limits": asdict(limits),
        "workdir": workdir,
        "uid": 1_000_000_000 + secrets.randbelow(1_000_000_000) if root else None,  # unique per run
        "nest_userns": mode is IsolationMode.USER_NAMESPACE,
        "lockdown": mode is not IsolationMode.RLIMITS_ONLY,
        "preamble": kind in (TestKind.STDIN, TestKind.FUNCTIONAL),
        "cgroup": None,
        "modules": _runner_modules(),
    }


def _sandbox_env(workdir: str) -> dict[str, str]:
    """Nothing is inherited: only these variables reach the launcher and the program."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
    env.update(PYTHONDONTWRITEBYTECODE="1", HOME=workdir, TMPDIR=workdir)
    env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    return env


@dataclass
class _LaunchReport:
    records: list[dict]
    reason: str
    returncode: int
    stderr: str


def _kill_launcher(proc: subprocess.Popen, uid: int | None, mode: IsolationMode) -> None:
    """Kill the launcher's session (never our own); without a PID namespace, also every process of its uid."""
    if proc.pid != os.getpgrp():  # start_new_session made the launcher its own group leader
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    kill = shutil.which("kill")
    if mode is IsolationMode.RLIMITS_ONLY and uid is not None and kill:
        subprocess.run([kill, "-KILL", "-1"], user=uid, group=uid, extra_groups=[], check=False)


def _launcher_argv(mode: IsolationMode, job_path: str) -> list[str]:
    if not sys.executable:
        raise SandboxError("sys.executable is empty; cannot start a Python launcher")
    if not LAUNCHER_PATH.is_file():
        raise SandboxError(f"the sandbox launcher is missing: expected {LAUNCHER_PATH}")
    return [
        *_unshare_prefix(mode),
        sys.executable,
        "-s",
        "-S",
        "-c",
        _BOOTSTRAP,
        str(LAUNCHER_PATH),
        job_path,
    ]


def _launch(job: dict, mode: IsolationMode, budget: float) -> _LaunchReport:
    job_path = os.path.join(job["workdir"], "job.json")
    with open(job_path, "w", encoding="utf-8") as fh:
        json.dump(job, fh)
    argv = _launcher_argv(mode, job_path)
    try:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd="/",
            env=_sandbox_env(job["workdir"]),
            start_new_session=True,
        )
    except OSError as exc:
        raise SandboxError(f"cannot start the sandbox launcher {argv[0]!r}: {exc}") from exc
    cap = 65536 + len(job["inputs"]) * 12 * (OUTPUT_CHARS + DETAIL_CHARS + 256)
    with proc:
        reason = "error"
        try:
            streams = {"out": (proc.stdout.fileno(), cap), "err": (proc.stderr.fileno(), 65536)}
            bufs, reason = watch(proc.pid, streams, budget)
        except OSError as exc:
            raise SandboxError(f"lost track of the sandbox launcher: {exc}") from exc
        finally:
            if reason != "exited":
                _kill_launcher(proc, job["uid"], mode)
        returncode = proc.wait()
    records = parse_events(bytes(bufs["out"]))
    return _LaunchReport(records, reason, returncode, bufs["err"].decode("utf-8", "replace"))


def _assemble(
    report: _LaunchReport, n_tests: int, budget: float
) -> tuple[tuple[TestOutcome, ...], list[str]]:
    """Per-test outcomes in order; tests the launcher never reported get a verdict that says why."""
    by_index, parts, done = {}, [], False
    for record in report.records:
        if "isolation" in record:
            parts = list(record["isolation"])
            for warning in record.get("warnings", []):
                _warn_once(f"sandbox isolation incomplete: {warning}")
        elif record.get("done"):
            done = True
        elif isinstance(record.get("i"), int):
            by_index[record["i"]] = TestOutcome(
                verdict=Verdict(record["verdict"]),
                detail=record["detail"],
                output=record["output"],
                output_sha256=record["sha"],
                elapsed=record["elapsed"],
            )
    if done:
        filler = TestOutcome(Verdict.NOT_RUN, "not run: an earlier test failed and fail_fast is on")
    elif report.reason == "timeout":
        filler = TestOutcome(Verdict.TIMEOUT, f"the outer wall budget of {budget:.1f} s was exhausted")
    else:
        tail = bounded(report.stderr.strip(), 400)
        filler = TestOutcome(
            Verdict.SANDBOX_ERROR, f"launcher ended ({report.reason}, {report.returncode}): {tail}"
        )
        logger.warning("sandbox launcher failed: %s", filler.detail)
    return tuple(by_index.get(i, filler) for i in range(n_tests)), parts


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
    cgroup = _make_cgroup(limits.address_space_bytes) if mode is not IsolationMode.RLIMITS_ONLY else None
    try:
        with tempfile.TemporaryDirectory(prefix="autojudge-sbx-", ignore_cleanup_errors=True) as workdir:
            job = _job(code, tests, limits, mode, workdir)
            job["cgroup"] = cgroup
            report = _launch(job, mode, budget)
    finally:
        _remove_cgroup(cgroup)
    return _assemble(report, len(tests), budget)


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
