"""What the evaluator and the sandbox launcher share: verdicts, bounded output, LiveCodeBench's output
comparison and the watch over a process's pipes.

Standard library only, and no imports from the package: the launcher process imports this module through a
bare ``autojudge_eval`` package (see ``sandbox.launcher``), never through ``autojudge_eval/__init__``.
"""

from __future__ import annotations

import contextlib
import enum
import json
import os
import time
from collections.abc import Callable

__all__ = [
    "CALL_KINDS",
    "PREAMBLE",
    "PREAMBLE_MODULES",
    "TestTimeout",
    "DETAIL_CHARS",
    "OUTPUT_CHARS",
    "Verdict",
    "bounded",
    "compare_stdout",
    "compare_value",
    "decode_value",
    "encode_value",
    "judge_call",
    "parse_events",
    "stripped_lines",
    "watch",
    "write_all",
]

DETAIL_CHARS = 500  # bound on TestOutcome.detail
OUTPUT_CHARS = 1000  # bound on TestOutcome.output (the full output is kept only as a sha256)


PREAMBLE_MODULES = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random")
PREAMBLE_MODULES += ("statistics", "itertools", "functools", "operator", "io", "sys", "json")
# LiveCodeBench runs every solution after these star-imports (and a raised recursion limit); so do we.
PREAMBLE = "".join(f"from {m} import *\n" for m in (*PREAMBLE_MODULES, "builtins", "typing"))
PREAMBLE += "".join(f"import {m}\n" for m in PREAMBLE_MODULES) + "sys.setrecursionlimit(50000)\n"
CALL_KINDS = ("functional", "call")  # one worker answers many calls


class TestTimeout(BaseException):
    """Raised by SIGALRM inside a functional worker when one call overruns."""

    __test__ = False  # not a pytest class


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
    import decimal  # only when two lines differ: the runner never pays for it

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
    except (ValueError, RecursionError):  # a forged value event can hold anything, nested any depth
        return False, "the returned value could not be read back", bounded(actual_json, OUTPUT_CHARS)
    canonical = json.dumps(got, sort_keys=True)
    if got == json.loads(expected_json):
        return True, "", canonical
    return False, f"returned {canonical[:200]}, expected {expected_json[:200]}", canonical


# ---------------------------------------------------------------------------------------------------------
# Plain values across the process boundary (HumanEval calls): JSON with tags for what JSON lacks.

_TAGGED = {tuple: "tuple", set: "set", frozenset: "frozenset"}
MAX_VALUE_NODES = 200_000  # a returned value with more parts than this is not read at all
MAX_VALUE_DEPTH = 100


class ValueTooComplex(ValueError):
    """The value is not plain data (an instance of a user class, a subclass of a builtin, a cycle or
    something too large); it is never compared."""


def encode_value(value: object) -> object:
    """A JSON-ready form of ``value`` that keeps every builtin type apart (int/float/bool, list/tuple,
    set, dict with any keys, bytes). Only exact builtin types pass: a subclass or a user object (say, one
    whose ``__eq__`` is always true) raises ValueTooComplex, as do cycles and oversized values."""
    budget = [MAX_VALUE_NODES]

    def enc(v: object, depth: int) -> object:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_VALUE_DEPTH:
            raise ValueTooComplex("the value is too large or too deeply nested")
        t = type(v)
        if v is None or t is bool or t is int or t is str:
            return v
        if t is float:
            return {"__t": "float", "v": repr(v)}
        if t is list:
            return [enc(x, depth + 1) for x in v]
        if t in _TAGGED:
            items = [enc(x, depth + 1) for x in v]
            if t is not tuple:
                items.sort(key=lambda x: json.dumps(x, sort_keys=True))
            return {"__t": _TAGGED[t], "v": items}
        if t is dict:
            return {"__t": "dict", "v": [[enc(k, depth + 1), enc(x, depth + 1)] for k, x in v.items()]}
        if t is bytes:
            return {"__t": "bytes", "v": v.hex()}
        raise ValueTooComplex(f"a {t.__module__}.{t.__qualname__} is not plain data")

    return enc(value, 0)


def decode_value(data: object) -> object:
    """The plain value ``encode_value`` encoded (builtin types only; raises ValueError on anything else)."""
    if data is None or type(data) in (bool, int, str):
        return data
    if type(data) is list:
        return [decode_value(x) for x in data]
    if type(data) is dict and set(data) == {"__t", "v"}:
        tag, v = data["__t"], data["v"]
        if tag == "float" and type(v) is str:
            return float(v)
        if tag == "bytes" and type(v) is str:
            return bytes.fromhex(v)
        if tag == "dict" and type(v) is list:
            return {decode_value(k): decode_value(x) for k, x in v}
        kinds = {name: kind for kind, name in _TAGGED.items()}
        if tag in kinds and type(v) is list:
            return kinds[tag](decode_value(x) for x in v)
    raise ValueError(f"not an encoded plain value: {str(data)[:100]}")


def judge_call(actual_json: str, expected_json: str) -> tuple[bool, str, str]:
    """Judge one HumanEval call: ``actual_json`` is the encoded returned value, ``expected_json`` the
    assertion {"op", "value", "tol"} converted from ``check``. Both are decoded to builtin values here, on
    the trusted side, so no object of the program's takes part in the comparison."""
    spec = json.loads(expected_json)
    try:
        got = decode_value(json.loads(actual_json))
        want = decode_value(spec.get("value"))
    except (ValueError, TypeError, RecursionError) as exc:
        return False, f"the returned value could not be read back: {exc}", bounded(actual_json, OUTPUT_CHARS)
    shown = bounded(repr(got), OUTPUT_CHARS)
    op = spec["op"]
    try:
        if op == "eq":
            ok = got == want
        elif op == "close":
            ok = abs(got - want) < spec["tol"]
        elif op == "truthy":
            ok = bool(got)
        elif op == "falsy":
            ok = not got
        elif op == "is":
            ok = got is want
        else:
            return False, f"unknown assertion {op!r}", shown
    except (TypeError, ValueError, OverflowError) as exc:
        return False, f"the assertion raised {type(exc).__name__}: {exc}", shown
    if ok:
        return True, "", shown
    return False, f"assertion {op} failed: returned {shown[:200]}, expected {repr(want)[:200]}", shown


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
        with contextlib.suppress(ValueError, RecursionError):  # a line nested deeper than the stack
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
    come and ``on_event`` returning False stops the watch. The window is fixed when the watch starts: nothing
    the process writes extends it. Returns the buffers and one reason: "exited", "timeout", "stopped" or
    "overflow:<name>".
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
            state["consumed"] = end + 1
            if events and not on_event(events[0]):
                return "stopped"
        return None

    import selectors  # the runner's watch; the launcher never imports it

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
    sel,
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
