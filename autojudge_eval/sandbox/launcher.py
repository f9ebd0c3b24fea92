"""The sandbox launcher: a script the evaluator runs by path, as its own process in its own session.

The evaluator starts ``python -s -c <bootstrap> <this file> <job.json>`` (``sandbox.runner._launcher_argv``),
as pid 1 of new namespaces where ``unshare`` works. ``main`` reads and deletes the job, locks the file system
down (``sandbox.mounts``), then forks a child per stdin/script test, or one child for all functional tests
(``sandbox.child``), judges every test and prints one JSON line per test. It never runs candidate code
itself. Standard library only: the siblings are imported through a bare ``autojudge_eval`` package, so
``autojudge_eval/__init__`` (which loads lm-eval) never runs here, and this folder is never on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import json
import os
import resource
import signal
import sys
import time
import types
from types import CodeType


def _bare_package() -> None:
    """Make ``autojudge_eval.sandbox.<sibling>`` importable without running any package ``__init__``: the
    evaluator side (``sandbox/__init__``, ``runner``, ``cache``) has no business in the sandboxed process."""
    here = os.path.dirname(os.path.abspath(__file__))
    for name, path in (("autojudge_eval", os.path.dirname(here)), ("autojudge_eval.sandbox", here)):
        if name not in sys.modules:
            package = types.ModuleType(name)
            package.__path__ = [path]
            sys.modules[name] = package


_bare_package()

from autojudge_eval.sandbox import child as sandbox_child  # noqa: E402
from autojudge_eval.sandbox import mounts as sandbox_mounts  # noqa: E402
from autojudge_eval.sandbox.common import (  # noqa: E402
    DETAIL_CHARS,
    OUTPUT_CHARS,
    Verdict,
    bounded,
    compare_stdout,
    compare_value,
    parse_events,
    stripped_lines,
    watch,
    write_all,
)

_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc")


def main(job_path: str) -> None:
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    os.umask(0o022)
    with open(job_path, encoding="utf-8") as fh:
        job = json.load(fh)
    os.unlink(job_path)  # the program never sees the job (nor the expected outputs)
    preamble = None
    if job["preamble"]:  # import once here: every child starts warm, and a dropped uid needs no file access
        for module in (*sandbox_child.PREAMBLE_MODULES, "typing"):
            __import__(module)
        preamble = compile(sandbox_child.PREAMBLE, "<preamble>", "exec")
    parts, warnings = _isolate(job)
    ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us
    _emit({"isolation": parts, "warnings": warnings})
    runner = _run_functional if job["kind"] == "functional" else _run_single
    index, total = 0, len(job["inputs"])
    while index < total:
        outcomes = runner(job, index, preamble)
        for outcome in outcomes:
            _emit(outcome)
        index += len(outcomes)
        if job["limits"]["fail_fast"] and any(o["verdict"] != Verdict.PASSED.value for o in outcomes):
            break
    _emit({"done": True})


def _emit(record: dict) -> None:
    write_all(1, (json.dumps(record) + "\n").encode())


def _isolate(job: dict) -> tuple[list[str], list[str]]:
    """Lock the file system down (namespace modes) and report what applied."""
    parts, warnings = [], []
    if job["lockdown"]:
        warnings = sandbox_mounts.lockdown(job["workdir"], job["uid"] or 0, job["limits"]["file_size_bytes"])
        parts.append("mountns-ro(partial)" if warnings else "mountns-ro")
    elif job["uid"] is not None:
        os.chown(job["workdir"], job["uid"], job["uid"])
    if job["uid"] is not None:
        parts.append("uid-drop")
    return [*parts, "rlimits"], warnings


def _spawn(job: dict, first: int, preamble: CodeType | None, stdin_text: str) -> tuple[int, dict[str, int]]:
    stdin_fd = os.memfd_create("stdin")
    write_all(stdin_fd, stdin_text.encode())
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    pipes = {name: os.pipe() for name in ("out", "err", "ev")}
    pid = os.fork()
    if pid == 0:
        sandbox_child.child_main(job, first, preamble, stdin_fd, {name: w for name, (_, w) in pipes.items()})
    os.close(stdin_fd)
    for _, writer in pipes.values():
        os.close(writer)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    return pid, {name: r for name, (r, _) in pipes.items()}


def _streams(job: dict, readers: dict[str, int]) -> dict[str, tuple[int, int]]:
    limits = job["limits"]
    caps = {
        "out": limits["max_stdout_bytes"],
        "err": limits["max_stderr_bytes"],
        "ev": limits["max_stdout_bytes"],
    }
    return {name: (fd, caps[name]) for name, fd in readers.items()}


def _finish(job: dict, pid: int, readers: dict[str, int]) -> tuple[int, resource.struct_rusage]:
    """Kill whatever is left of the child's tree, reap the child, close the pipes."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    uid = job["uid"]
    if uid is not None:  # also catches processes that escaped the group with setsid()
        helper = os.fork()
        if helper == 0:
            try:
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(helper, 0)
    _, status, usage = os.wait4(pid, 0)
    for fd in readers.values():
        os.close(fd)
    with contextlib.suppress(ChildProcessError):  # reap killed orphans: zombies count against RLIMIT_NPROC
        while os.waitpid(-1, os.WNOHANG)[0]:
            continue
    return status, usage


def _run_single(job: dict, index: int, preamble: CodeType | None) -> list[dict]:
    """One child runs the whole program on one test (stdin or script kinds)."""
    started = time.monotonic()
    stdin_text = job["inputs"][index] if job["kind"] == "stdin" else ""
    pid, readers = _spawn(job, index, preamble, stdin_text)
    bufs, reason = watch(pid, _streams(job, readers), job["limits"]["wall_seconds"])
    status, usage = _finish(job, pid, readers)
    elapsed = time.monotonic() - started
    stdout, stderr = (bufs[name].decode("utf-8", "replace") for name in ("out", "err"))
    events = parse_events(bytes(bufs["ev"]))
    verdict, detail = _program_verdict(job, reason, status, usage, events[-1] if events else {}, stderr)
    if verdict is None:
        verdict, detail = _completed_verdict(job, index, stdout)
    output = "\n".join(stripped_lines(stdout)) if job["kind"] == "stdin" else ""
    if verdict in (Verdict.COMPILE_ERROR, Verdict.SANDBOX_ERROR):  # every other test would end the same way
        return [_outcome(i, verdict, detail, "", elapsed) for i in range(index, len(job["inputs"]))]
    return [_outcome(index, verdict, detail, output, elapsed)]


def _run_functional(job: dict, first: int, preamble: CodeType | None) -> list[dict]:
    """One child imports the solution once and calls it for tests first..n; it is restarted after a crash."""
    pid, readers = _spawn(job, first, preamble, "")
    outcomes: list[dict] = []
    state: dict = {"ready": False, "fatal": None, "last": time.monotonic()}

    def on_event(event: dict) -> bool:
        return _functional_event(job, first, event, outcomes, state)

    window = job["limits"]["wall_seconds"] + 1.0
    _, reason = watch(pid, _streams(job, readers), window, on_event=on_event)
    status, usage = _finish(job, pid, readers)
    remaining = range(first + len(outcomes), len(job["inputs"]))
    if state["fatal"] is not None:
        return outcomes + [_outcome(i, *state["fatal"], "", 0.0) for i in remaining]
    if reason == "stopped" or not remaining:
        return outcomes
    verdict, detail = _death_verdict(job, reason, status, usage, "")
    if verdict is None:
        verdict, detail = Verdict.RUNTIME_ERROR, "the program exited before returning"
    elapsed = time.monotonic() - state["last"]
    if not state["ready"]:  # it died while importing: every call would
        return [_outcome(i, verdict, detail, "", elapsed) for i in remaining]
    return [*outcomes, _outcome(remaining[0], verdict, detail, "", elapsed)]


def _functional_event(job: dict, first: int, event: dict, outcomes: list[dict], state: dict) -> bool:
    """Judge one event of a functional child; False stops watching it."""
    name = event.get("event")
    if name == "ready":
        state["ready"] = True
        return True
    if name in ("compile_error", "setup_error", "sandbox_error"):
        state["fatal"] = _event_verdict(job["kind"], event)
        return False
    index = first + len(outcomes)
    if event.get("i") != index:
        return True  # stray or forged line
    state["last"] = time.monotonic()
    if name == "value":
        ok, detail, output = compare_value(event["json"], job["expected"][index])
        verdict = Verdict.PASSED if ok else Verdict.WRONG_ANSWER
    else:
        (verdict, detail), output = _event_verdict(job["kind"], event), ""
    outcomes.append(_outcome(index, verdict, detail, output, event.get("elapsed", 0.0)))
    failed = verdict is not Verdict.PASSED
    return index + 1 < len(job["inputs"]) and not (failed and job["limits"]["fail_fast"])


def _event_verdict(kind: str, event: dict) -> tuple[Verdict, str]:
    """Verdict for a child event that reports a failure."""
    name, exc_type, detail = event.get("event"), event.get("type", ""), event.get("detail", "")
    if name == "compile_error":
        return Verdict.COMPILE_ERROR, detail
    if name == "sandbox_error":
        return Verdict.SANDBOX_ERROR, f"the sandbox could not start the program: {detail}"
    if name == "timeout" or exc_type == sandbox_child.TestTimeout.__name__:
        return Verdict.TIMEOUT, "the call exceeded the per-test wall-clock limit"
    if exc_type == "MemoryError":
        return Verdict.MEMORY_LIMIT, detail
    if exc_type == "AssertionError" and kind == "script":
        return Verdict.WRONG_ANSWER, detail
    if name == "exit":
        return Verdict.RUNTIME_ERROR, f"the program called exit({event.get('code')}) before finishing"
    return Verdict.RUNTIME_ERROR, detail


def _program_verdict(
    job: dict, reason: str, status: int, usage: resource.struct_rusage, event: dict, stderr: str
) -> tuple[Verdict | None, str]:
    """Verdict of a stdin/script run from how it ended, or (None, "") when it completed normally."""
    if reason != "exited":
        return _death_verdict(job, reason, status, usage, stderr)
    name = event.get("event")
    if name == "exit" and event.get("code") == 0 and job["kind"] == "stdin":
        return None, ""  # exit() after printing the answer is fine for a stdin program
    if name in ("compile_error", "sandbox_error", "raised", "exit"):
        return _event_verdict(job["kind"], event)
    verdict, detail = _death_verdict(job, reason, status, usage, stderr)
    if verdict is None and name != "finished" and job["kind"] == "script":
        return Verdict.RUNTIME_ERROR, "the program exited (status 0) before its checks finished"
    return verdict, detail


def _death_verdict(
    job: dict, reason: str, status: int, usage: resource.struct_rusage, stderr: str
) -> tuple[Verdict | None, str]:
    limits = job["limits"]
    if reason == "timeout":
        return Verdict.TIMEOUT, f"wall-clock limit of {limits['wall_seconds']} s per test exceeded"
    if reason.startswith("overflow:"):
        stream = {"out": "stdout", "err": "stderr", "ev": "result stream"}[reason.split(":")[1]]
        return Verdict.OUTPUT_LIMIT, f"{stream} exceeded its cap and the program was killed"
    memory = any(hint in stderr for hint in _MEMORY_HINTS)
    if os.WIFSIGNALED(status):
        sig, cpu = os.WTERMSIG(status), usage.ru_utime + usage.ru_stime
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits["cpu_seconds"]):
            return Verdict.TIMEOUT, f"CPU limit of {limits['cpu_seconds']} s exceeded ({cpu:.2f} s used)"
        if sig == signal.SIGXFSZ:
            return Verdict.OUTPUT_LIMIT, "file size limit exceeded"
        name = signal.Signals(sig).name
        return (
            Verdict.MEMORY_LIMIT if memory else Verdict.RUNTIME_ERROR
        ), f"killed by {name}: {stderr[-300:]}"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return None, ""
    return (Verdict.MEMORY_LIMIT if memory else Verdict.RUNTIME_ERROR), f"exit status {code}: {stderr[-300:]}"


def _completed_verdict(job: dict, index: int, stdout: str) -> tuple[Verdict, str]:
    if job["kind"] == "script":
        return Verdict.PASSED, ""
    ok, detail = compare_stdout(stdout, job["expected"][index])
    return (Verdict.PASSED if ok else Verdict.WRONG_ANSWER), detail


def _outcome(index: int, verdict: Verdict, detail: str, output: str, elapsed: float) -> dict:
    digest = hashlib.sha256(output.encode("utf-8", "surrogatepass")).hexdigest()
    detail, output = bounded(detail, DETAIL_CHARS), bounded(output, OUTPUT_CHARS)
    return {"i": index, "verdict": verdict.value, "detail": detail, "output": output, "sha": digest,
            "elapsed": round(elapsed, 4)}  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[-1])
