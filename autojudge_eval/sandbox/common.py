"""What the evaluator and the sandbox launcher share: verdicts, bounded output, LiveCodeBench's output
comparison and the watch over a process's pipes.

Standard library only, and no imports from the package: the launcher process imports this module through a
bare ``autojudge_eval`` package (see ``sandbox.launcher``), never through ``autojudge_eval/__init__``.
"""

from __future__ import annotations

import contextlib
import decimal
import enum
import json
import os
import selectors
import time
from collections.abc import Callable

__all__ = [
    "DETAIL_CHARS",
    "OUTPUT_CHARS",
    "Verdict",
    "bounded",
    "compare_stdout",
    "compare_value",
    "parse_events",
    "stripped_lines",
    "watch",
    "write_all",
]

DETAIL_CHARS = 500  # bound on TestOutcome.detail
OUTPUT_CHARS = 1000  # bound on TestOutcome.output (the full output is kept only as a sha256)


class Verdict(str, enum.Enum):
    """How one test ended. NOT_RUN: skipped because an earlier test failed and ``fail_fast`` was on."""

    PASSED = "passed"
    WRONG_ANSWER = "wrong_answer"
    TIMEOUT = "timeout"
    RUNTIME_ERROR = "runtime_error"
    COMPILE_ERROR = "compile_error"
    MEMORY_LIMIT = "memory_limit"
    OUTPUT_LIMIT = "output_limit"
    SANDBOX_ERROR = "sandbox_error"
    NOT_RUN = "not_run"


# ---------------------------------------------------------------------------------------------------------
# Output comparison (LiveCodeBench's rules).


def stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimal_tokens(line: str) -> list | None:
    try:
        return [decimal.Decimal(token) for token in line.split()]
    except (decimal.InvalidOperation, ValueError):
        return None


def compare_stdout(actual: str, expected: str) -> tuple[bool, str]:
    """Strip both, compare line by line; unequal lines still match when their tokens are equal decimals
    (LiveCodeBench's rule: ``1.0`` equals ``1.00``, but there is no tolerance). Returns (ok, reason)."""
    got, want = stripped_lines(actual), stripped_lines(expected)
    if len(got) != len(want):
        return False, f"expected {len(want)} output line(s), got {len(got)}"
    for number, (line, ref) in enumerate(zip(got, want, strict=True), start=1):
        if line == ref:
            continue
        tokens = _decimal_tokens(line)
        if tokens is None or tokens != _decimal_tokens(ref):
            return False, f"line {number}: got {line[:100]!r}, expected {ref[:100]!r}"
    return True, ""


def compare_value(actual_json: str, expected_json: str) -> tuple[bool, str, str]:
    """Compare a returned value (JSON text) with the expected JSON. Returns (ok, reason, canonical output)."""
    try:
        got = json.loads(actual_json)
    except ValueError:
        return False, "the returned value could not be read back", actual_json
    canonical = json.dumps(got, sort_keys=True)
    if got == json.loads(expected_json):
        return True, "", canonical
    return False, f"returned {canonical[:200]}, expected {expected_json[:200]}", canonical


def bounded(text: str, limit: int) -> str:
    if len(text) <= limit:
        return text
    half = (limit - 12) // 2
    return text[:half] + " ...[cut]... " + text[-half:]


# ---------------------------------------------------------------------------------------------------------
# JSON-lines events over pipes, read with caps and a deadline.


def write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def parse_events(data: bytes) -> list[dict]:
    """The JSON objects among the lines of ``data``; anything else (a forged or cut line) is skipped."""
    events = []
    for line in data.split(b"\n"):
        with contextlib.suppress(ValueError):
            event = json.loads(line)
            if isinstance(event, dict):
                events.append(event)
    return events


def watch(
    pid: int,
    streams: dict[str, tuple[int, int]],
    window: float,
    on_event: Callable[[dict], bool] | None = None,
) -> tuple[dict[str, bytearray], str]:
    """Collect a process's output until it exits, a stream passes its cap, or ``window`` seconds pass.

    ``streams`` maps names to (fd, cap). With ``on_event``, the "ev" stream is read as JSON lines as they
    come: each line restarts the window and ``on_event`` returning False stops the watch. Returns the
    buffers and one reason: "exited", "timeout", "stopped" or "overflow:<name>".
    """
    names = {fd: name for name, (fd, _) in streams.items()}
    bufs = {name: bytearray() for name in streams}
    state = {"deadline": time.monotonic() + window, "consumed": 0}

    def absorb(name: str, chunk: bytes) -> str | None:
        bufs[name] += chunk
        if len(bufs[name]) > streams[name][1]:
            return f"overflow:{name}"
        if name != "ev" or on_event is None:
            return None
        while (end := bufs["ev"].find(b"\n", state["consumed"])) >= 0:
            events = parse_events(bytes(bufs["ev"][state["consumed"] : end]))
            state["consumed"], state["deadline"] = end + 1, time.monotonic() + window
            if events and not on_event(events[0]):
                return "stopped"
        return None

    sel, pidfd = selectors.DefaultSelector(), os.pidfd_open(pid)
    try:
        sel.register(pidfd, selectors.EVENT_READ)
        for fd in names:
            os.set_blocking(fd, False)
            sel.register(fd, selectors.EVENT_READ)
        while True:
            ready = sel.select(max(0.0, state["deadline"] - time.monotonic()))
            if not ready:
                return bufs, "timeout"
            exited = any(key.fd == pidfd for key, _ in ready)
            for fd in [key.fd for key, _ in ready if key.fd != pidfd] if not exited else list(names):
                reason = _read_available(sel, fd, names[fd], absorb, drain=exited)
                if reason:
                    return bufs, reason
            if exited:
                return bufs, "exited"
    finally:
        sel.close()
        os.close(pidfd)


def _read_available(
    sel: selectors.BaseSelector,
    fd: int,
    name: str,
    absorb: Callable[[str, bytes], str | None],
    *,
    drain: bool,
) -> str | None:
    """Read one chunk (or, when draining after exit, everything buffered now) from a non-blocking fd."""
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return None
        if not chunk:
            with contextlib.suppress(KeyError, ValueError):
                sel.unregister(fd)
            return None
        reason = absorb(name, chunk)
        if reason or not drain:
            return reason
