"""Judging, on the evaluator's side: turn the launcher's report of one test into verdicts.

The launcher (``sandbox.launcher``) never receives an expected output; it reports what the program did
(stdout, stderr, exit status, CPU time, the worker's events, the returned value as JSON) and this module
compares. The events are the program's to write, so they are data: a failure event can fail a test but
never pass one, and nothing the program writes can look like the sandbox's fault (SANDBOX_ERROR).
"""

from __future__ import annotations

import hashlib
import os
import signal
from dataclasses import dataclass

from autojudge_eval.sandbox.common import (
    CALL_KINDS,
    DETAIL_CHARS,
    OUTPUT_CHARS,
    TestTimeout,
    Verdict,
    bounded,
    compare_stdout,
    compare_value,
    judge_call,
    stripped_lines,
)
from autojudge_eval.sandbox.values import SandboxLimits, TestOutcome

_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc")


@dataclass(frozen=True)
class Judging:
    """What judging one program needs: its kind, limits and expected outputs (these never leave here)."""

    kind: str
    limits: SandboxLimits
    expected: tuple[str, ...]


def judge_report(judging: Judging, index: int, report: dict, oom_killed: bool) -> list[TestOutcome]:
    """Outcomes of test ``index`` (and of the later tests, when the report decides them all: a compile
    error, or a functional program that never reached its first call). ``oom_killed``: the program's
    memory cgroup counted an OOM kill during this test."""
    if report.get("infra"):
        detail = f"the sandbox could not start the program: {bounded(str(report['infra']), 300)}"
        return [outcome(Verdict.SANDBOX_ERROR, detail) for _ in range(index, len(judging.expected))]
    if judging.kind in CALL_KINDS:
        return _judge_call(judging, index, report, oom_killed)
    return _judge_single(judging, index, report, oom_killed)


def outcome(verdict: Verdict, detail: str, output: str = "", elapsed: float = 0.0) -> TestOutcome:
    """One test's outcome, bounded. A detail can quote the program's own event text, so lone surrogates
    (valid in JSON, not in UTF-8) become "?": results files written as UTF-8 stay writable."""
    digest = hashlib.sha256(output.encode("utf-8", "surrogatepass")).hexdigest()
    detail = bounded(detail, DETAIL_CHARS).encode("utf-8", "replace").decode("utf-8")
    return TestOutcome(verdict, detail, bounded(output, OUTPUT_CHARS), digest, round(float(elapsed), 4))


def _judge_single(judging: Judging, index: int, report: dict, oom: bool) -> list[TestOutcome]:
    """A stdin/script test: how the program ended, then its stdout against the expected output."""
    stdout = str(report.get("out", ""))
    verdict, detail = _program_verdict(judging, report, oom)
    if verdict is None:
        verdict, detail = _completed_verdict(judging, index, stdout)
    output = "\n".join(stripped_lines(stdout)) if judging.kind == "stdin" else ""
    elapsed = report.get("elapsed", 0.0)
    if verdict is Verdict.COMPILE_ERROR:  # every other test would end the same way
        return [outcome(verdict, detail, "", elapsed) for _ in range(index, len(judging.expected))]
    return [outcome(verdict, detail, output, elapsed)]


def _judge_call(judging: Judging, index: int, report: dict, oom: bool) -> list[TestOutcome]:
    """A functional (LiveCodeBench) or call (HumanEval) test: the returned value, compared here."""
    wall, elapsed = judging.limits.wall_seconds, report.get("elapsed", 0.0)
    events = report.get("events", [])
    if report.get("reason") == "stopped" and events and events[0].get("i") == index:
        event = events[0]
        if elapsed > wall + 0.1:  # the launcher's clock, whatever the program did to its own timer
            verdict, detail, output = Verdict.TIMEOUT, f"the call took {elapsed:.2f} s (limit {wall} s)", ""
        elif event.get("event") == "value" and isinstance(event.get("json"), str):
            compare = judge_call if judging.kind == "call" else compare_value
            ok, detail, output = compare(event["json"], judging.expected[index])
            verdict = Verdict.PASSED if ok else Verdict.WRONG_ANSWER
        else:
            (verdict, detail), output = _event_verdict(judging.kind, event), ""
        return [outcome(verdict, detail, output, elapsed)]
    verdict, detail = _death_verdict(judging, report, oom)
    if not report.get("ready"):  # it never got to its first call: every call would end the same way
        named = [e for e in events if e.get("event") in ("compile_error", "setup_error")]
        if named and verdict in (None, Verdict.RUNTIME_ERROR):
            verdict, detail = _event_verdict(judging.kind, named[0])
        if verdict is None:
            verdict, detail = Verdict.RUNTIME_ERROR, "the program exited before its first call"
        return [outcome(verdict, detail, "", elapsed) for _ in range(index, len(judging.expected))]
    if verdict is None:
        verdict, detail = Verdict.RUNTIME_ERROR, "the program exited before returning"
    return [outcome(verdict, detail, "", elapsed)]


def _event_verdict(kind: str, event: dict) -> tuple[Verdict, str]:
    """Verdict for an event that reports a failure. Events are the program's to write: none of them can
    make a test pass or look like the sandbox's fault (a "sandbox_error" from inside is a runtime error)."""
    name, exc_type = event.get("event"), str(event.get("type", ""))
    detail = bounded(str(event.get("detail", "")), DETAIL_CHARS)
    if name == "compile_error":
        return Verdict.COMPILE_ERROR, detail
    if exc_type == TestTimeout.__name__:
        return Verdict.TIMEOUT, "the call exceeded the per-test wall-clock limit"
    if exc_type == "MemoryError":
        return Verdict.MEMORY_LIMIT, detail
    if exc_type == "OutputLimit":
        return Verdict.OUTPUT_LIMIT, detail
    if exc_type == "AssertionError" and kind == "script":
        return Verdict.WRONG_ANSWER, detail
    if name == "exit":
        return (
            Verdict.RUNTIME_ERROR,
            f"the program called exit({str(event.get('code'))[:50]}) before finishing",
        )
    return Verdict.RUNTIME_ERROR, detail or f"the program reported {str(name)[:50]!r}"


def _program_verdict(judging: Judging, report: dict, oom: bool) -> tuple[Verdict | None, str]:
    """Verdict of a stdin/script run from how it ended, or (None, "") when it ended normally (exit status
    0). A failure event counts only as a failure; a success needs the real exit status 0 as well."""
    death = _death_verdict(judging, report, oom)
    if report.get("reason") != "exited":
        return death
    events = report.get("events", [])
    failures = [e for e in events if e.get("event") in ("compile_error", "raised", "setup_error")]
    failures += [e for e in events if e.get("event") == "exit" and e.get("code") != 0]
    if failures and (death[0] is None or death[0] is Verdict.RUNTIME_ERROR):
        return _event_verdict(judging.kind, failures[0])
    if death[0] is not None:
        return death
    if judging.kind == "script" and not any(e.get("event") == "finished" for e in events):
        if any(e.get("event") == "exit" for e in events):
            return Verdict.RUNTIME_ERROR, "the program called exit(0) before its checks finished"
        return Verdict.RUNTIME_ERROR, "the program exited (status 0) before its checks finished"
    return None, ""


def _death_verdict(judging: Judging, report: dict, oom: bool) -> tuple[Verdict | None, str]:
    limits, reason = judging.limits, str(report.get("reason"))
    status, cpu, stderr = report.get("status"), report.get("cpu", 0.0), str(report.get("err", ""))
    if reason == "timeout":
        return Verdict.TIMEOUT, f"wall-clock limit of {limits.wall_seconds} s per test exceeded"
    if reason.startswith("overflow:"):
        stream = {"out": "stdout", "err": "stderr"}.get(reason.split(":")[1], "result stream")
        return Verdict.OUTPUT_LIMIT, f"{stream} exceeded its cap and the program was killed"
    if not isinstance(status, int):
        return None, ""
    memory = oom or any(hint in stderr for hint in _MEMORY_HINTS)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits.cpu_seconds):
            return Verdict.TIMEOUT, f"CPU limit of {limits.cpu_seconds} s exceeded ({cpu:.2f} s used)"
        if sig == signal.SIGXFSZ:
            return Verdict.OUTPUT_LIMIT, "file size limit exceeded"
        name = _signal_name(sig)
        if oom:
            return Verdict.MEMORY_LIMIT, f"killed by {name}: the program's memory cgroup ran out"
        verdict = Verdict.MEMORY_LIMIT if memory else Verdict.RUNTIME_ERROR
        return verdict, f"killed by {name}: {stderr[-300:]}"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return None, ""
    return (Verdict.MEMORY_LIMIT if memory else Verdict.RUNTIME_ERROR), f"exit status {code}: {stderr[-300:]}"


def _signal_name(sig: int) -> str:
    try:
        return signal.Signals(sig).name
    except ValueError:  # a real-time signal between SIGRTMIN and SIGRTMAX has no name
        return f"signal {sig}"


def _completed_verdict(judging: Judging, index: int, stdout: str) -> tuple[Verdict, str]:
    if judging.kind == "script":
        return Verdict.PASSED, (
            "passed an in-process check(candidate): this test could not be converted, and code in the "
            "program's own process could forge this pass"
        )
    ok, detail = compare_stdout(stdout, judging.expected[index])
    return (Verdict.PASSED if ok else Verdict.WRONG_ANSWER), detail
