"""Inside the forked child: the only place candidate code runs.

The launcher (``sandbox.launcher``) forks one child per stdin/script test, or one for all functional tests.
``child_main`` wires the pipes, sets the resource limits, drops privileges and runs the program, reporting to
the launcher as JSON lines on ``EVENT_FD``. Standard library only (see ``sandbox.common``).
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import json
import linecache
import os
import resource
import signal
import sys
import time
import traceback
from types import CodeType, FrameType

from autojudge_eval.sandbox.common import DETAIL_CHARS, OUTPUT_CHARS, write_all

__all__ = ["EVENT_FD", "PREAMBLE", "PREAMBLE_MODULES", "TestTimeout", "child_main"]

EVENT_FD = 1000  # where a child writes its JSON events for the launcher
PREAMBLE_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random")
PREAMBLE_MODULES += ("statistics", "itertools", "functools", "operator", "io", "sys", "json")
# LiveCodeBench runs every solution after these star-imports (and a raised recursion limit); so do we.
PREAMBLE = "".join(f"from {m} import *\n" for m in (*PREAMBLE_MODULES, "builtins", "typing"))
PREAMBLE += "".join(f"import {m}\n" for m in PREAMBLE_MODULES) + "sys.setrecursionlimit(50000)\n"


class TestTimeout(BaseException):
    """Raised by SIGALRM inside a functional child when one call overruns."""

    __test__ = False  # not a pytest class


def child_main(
    job: dict, first: int, preamble: CodeType | None, stdin_fd: int, writers: dict[str, int]
) -> None:
    """Run the job's program on tests ``first``.. and ``_exit``; never returns."""
    try:
        os.dup2(writers["ev"], EVENT_FD)
        _prepare(job, first, stdin_fd, writers)
    except BaseException as exc:
        _event({"event": "sandbox_error", "detail": f"{type(exc).__name__}: {exc}"})
        os._exit(70)
    status = 1
    try:
        runner = _run_functional if job["kind"] == "functional" else _run_program
        status = runner(job, first, preamble)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(status)


def _prepare(job: dict, first: int, stdin_fd: int, writers: dict[str, int]) -> None:
    os.setpgid(0, 0)
    for fd, target in ((stdin_fd, 0), (writers["out"], 1), (writers["err"], 2)):
        os.dup2(fd, target)
    os.closerange(3, EVENT_FD)
    os.closerange(EVENT_FD + 1, os.sysconf("SC_OPEN_MAX"))
    os.chdir(job["workdir"])
    limits = job["limits"]
    calls = len(job["inputs"]) - first if job["kind"] == "functional" else 1
    cpu = int(limits["cpu_seconds"] * calls + 0.999)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for name, value in (
        ("AS", "address_space_bytes"),
        ("FSIZE", "file_size_bytes"),
        ("NPROC", "max_processes"),
    ):
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (limits[value], limits[value]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    _drop_privileges(job)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the launcher
    os.umask(0o077)


def _drop_privileges(job: dict) -> None:
    uid = job["uid"]
    if job["nest_userns"]:  # a fresh user namespace: no capabilities over the mounts set up above
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.unshare(0x10000000):  # CLONE_NEWUSER
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER) failed")
    elif uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if os.geteuid() == 0 and not job["nest_userns"]:
        raise PermissionError("refusing to run generated code as root")


def _event(record: dict) -> None:
    with contextlib.suppress(OSError):
        write_all(EVENT_FD, (json.dumps(record) + "\n").encode())


def _describe(exc: BaseException) -> dict:
    try:
        tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # drop the runner's own frame
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:  # a hostile __str__ must not stop the report
        text = type(exc).__name__
    return {"type": type(exc).__name__, "detail": text[-DETAIL_CHARS:]}


def _compile(job: dict) -> CodeType | None:
    source = job["code"]
    linecache.cache["solution.py"] = (len(source), None, source.splitlines(True), "solution.py")
    try:
        return compile(source, "solution.py", "exec")
    except (SyntaxError, ValueError, OverflowError, MemoryError, RecursionError) as exc:
        _event({"event": "compile_error", **_describe(exc)})
        return None


def _run_program(job: dict, index: int, preamble: CodeType | None) -> int:
    code = _compile(job)
    if code is None:
        return 1
    namespace = {"__name__": "__main__", "__builtins__": builtins}
    try:
        if preamble is not None:
            exec(preamble, namespace)
        exec(code, namespace)
        sys.stdout.flush()
    except SystemExit as exc:
        status = 0 if exc.code is None else exc.code if isinstance(exc.code, int) else 1
        _event({"event": "exit", "code": status})
        return status
    except BaseException as exc:
        _event({"event": "raised", **_describe(exc)})
        return 1
    _event({"event": "finished"})
    return 0


def _run_functional(job: dict, first: int, preamble: CodeType | None) -> int:
    code = _compile(job)
    if code is None:
        return 1
    namespace = {"__name__": "solution", "__builtins__": builtins}
    try:
        if preamble is not None:
            exec(preamble, namespace)
        exec(code, namespace)
        name = job["func_name"]
        holder = namespace["Solution"]() if "Solution" in namespace else None
        method = getattr(holder, name, None) if holder is not None else namespace.get(name)
        if not callable(method):
            raise NameError(f"the program defines neither Solution().{name} nor a function {name}")
    except BaseException as exc:
        _event({"event": "setup_error", **_describe(exc)})
        return 1
    _event({"event": "ready"})
    signal.signal(signal.SIGALRM, _on_alarm)
    for index in range(first, len(job["inputs"])):
        _event({"i": index, **_call_once(method, job["inputs"][index], job["limits"]["wall_seconds"])})
    return 0


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise TestTimeout()


def _call_once(method, raw_args: str, wall: float) -> dict:
    started = time.perf_counter()
    try:
        signal.setitimer(signal.ITIMER_REAL, wall)
        value = method(*[json.loads(line) for line in raw_args.split("\n")])
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return {"event": "raised", "elapsed": time.perf_counter() - started, **_describe(exc)}
    elapsed = time.perf_counter() - started
    try:
        text = json.dumps(list(value) if isinstance(value, tuple) else value)
    except (TypeError, ValueError, RecursionError):
        return {"event": "value", "elapsed": elapsed, "json": json.dumps(repr(value)[:OUTPUT_CHARS])}
    return {"event": "value", "elapsed": elapsed, "json": text}
