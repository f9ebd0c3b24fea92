"""The sandbox launcher: a fresh interpreter, pid 1 of the sandbox's namespaces, that runs the tests.

The evaluator (``sandbox.runner``) starts ``python -s -S -c <bootstrap>`` through ``unshare`` in its own
session. The bootstrap reads one JSON line from stdin: this module and its siblings (``common``,
``mounts``, ``child``, compiled and marshalled by the evaluator, so no file of the checkout is read here)
and the job: the program, its kind and limits, never an expected output. ``main`` pivots into the
minimal root (``sandbox.mounts``), reports which layers applied, then answers each "run i" command (which
carries test i's input) by forking a worker that runs the program (``sandbox.child``) and reporting what
it did. The evaluator judges those reports; nothing here knows whether a test passed. The launcher never
runs candidate code itself, is not dumpable, and the workers fork from it: walking ``sys._getframe()`` or
``gc.get_objects()`` there finds the program and the inputs sent so far, nothing else.
Standard library only (see ``sandbox.common``).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import time
from types import CodeType

from autojudge_eval.sandbox import child as sandbox_child
from autojudge_eval.sandbox import mounts as sandbox_mounts
from autojudge_eval.sandbox.common import (
    CALL_KINDS,
    PREAMBLE,
    PREAMBLE_MODULES,
    parse_events,
    watch,
    write_all,
)

__all__ = ["main", "program_events", "serve"]

_LIBC = ctypes.CDLL(None, use_errno=True)
_GRACE = 0.25  # seconds past the per-test wall limit before the launcher kills a worker


def main(job: dict, commands) -> None:
    """Set up, serve the evaluator's commands (a binary file of JSON lines) until it closes them, and
    ``_exit`` (no interpreter teardown: the evaluator is waiting). A failure before the first report ends
    the launcher with its traceback on stderr, which the evaluator records as SANDBOX_ERROR."""
    status = 0
    try:
        _LIBC.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no process of the same uid can read our memory
        _LIBC.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us (pid 1 anyway in a pidns)
        os.umask(0o022)
        job["cgroup_fd"] = _open_cgroup(job)
        parts, warnings, workdir = _isolate(job)
        job["workdir"] = workdir
        os.environ.update(HOME=workdir, TMPDIR=workdir)
        _emit({"isolation": parts, "warnings": warnings})
        serve(job, commands, 1)
    except BaseException:
        status = 1
        import traceback  # only on failure

        write_all(2, traceback.format_exc().encode("utf-8", "replace"))
    finally:
        os._exit(status)


def _emit(record: dict) -> None:
    write_all(1, (json.dumps(record) + "\n").encode())


def _open_cgroup(job: dict) -> int | None:
    """A handle on the per-program memory cgroup's ``cgroup.procs`` (None where there is none): each
    worker writes itself into it, then closes it."""
    spec = job.get("cgroup")
    if not spec:
        return None
    try:
        return os.open(spec["procs"], os.O_WRONLY | os.O_CLOEXEC)
    except OSError:
        return None


def _isolate(job: dict) -> tuple[list[str], list[str], str]:
    """Pivot into the minimal root (namespace modes; else the older read-only lockdown); report what applied
    and the working directory the program gets."""
    parts, warnings, workdir = ["exec-runner"], [], job["workdir"]
    if job["lockdown"]:
        owner = job["uid"] or 0
        try:
            sandbox_mounts.minimal_root(job["workdir"], owner, job["limits"]["file_size_bytes"])
            parts.append("minroot")
            workdir = sandbox_mounts.INNER_WORKDIR
        except OSError as exc:
            warnings = [f"minimal root failed ({exc}); the host's file system is visible read-only"]
            warnings += sandbox_mounts.lockdown(job["workdir"], owner, job["limits"]["file_size_bytes"])
            parts.append("mountns-ro(partial)" if len(warnings) > 1 else "mountns-ro")
    elif job["uid"] is not None:
        os.chown(job["workdir"], job["uid"], job["uid"])
    if job["uid"] is not None:
        parts.append("uid-drop")
    parts.append("rlimits")
    if job.get("cgroup") and job["cgroup_fd"] is None:
        parts.append("memcg-unavailable")
    return parts, warnings, workdir


# ---------------------------------------------------------------------------------------------------------
# The test loop (trusted: no program code ever runs in this process).


def serve(job: dict, commands, report_fd: int) -> None:
    """Answer "run i" commands (JSON lines on ``commands``, each with its test's input: only the tests that
    run are sent) with reports on ``report_fd``, until the evaluator closes the command pipe."""
    preamble = None
    if job["preamble"]:  # import once here: every worker starts warm
        for module in (*PREAMBLE_MODULES, "typing"):
            __import__(module)
        preamble = compile(PREAMBLE, "<preamble>", "exec")
    state: dict = {"worker": None}
    for line in commands:
        command = json.loads(line)
        index, raw_input = command["run"], command["input"]
        if job["kind"] in CALL_KINDS:
            report = _call(job, index, raw_input, preamble, state)
        else:
            report = _single(job, index, raw_input, preamble)
        write_all(report_fd, (json.dumps(report) + "\n").encode())
    if state["worker"] is not None:
        _finish(job, state["worker"])


def _streams(job: dict, readers: dict[str, int]) -> dict[str, tuple[int, int]]:
    limits = job["limits"]
    caps = {"out": limits["max_stdout_bytes"], "err": limits["max_stderr_bytes"]}
    caps["ev"] = limits["max_stdout_bytes"]
    return {name: (readers[name], caps[name]) for name in ("out", "err", "ev")}


def _spawn(job: dict, first: int, preamble: CodeType | None, stdin_text: str) -> dict:
    """Fork a worker; returns its handle, or raises OSError when its setup failed (an infrastructure fault:
    no program code has run yet)."""
    stdin_fd = os.memfd_create("stdin")
    write_all(stdin_fd, stdin_text.encode())
    os.lseek(stdin_fd, 0, os.SEEK_SET)
    pipes = {name: os.pipe() for name in ("out", "err", "ev", "setup")}
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        writers = {name: w for name, (_, w) in pipes.items()}
        sandbox_child.worker_main(job, first, preamble, stdin_fd, writers, go_r)
    os.close(stdin_fd)
    os.close(go_r)
    for _, writer in pipes.values():
        os.close(writer)
    with contextlib.suppress(OSError):
        os.setpgid(pid, pid)
    readers = {name: r for name, (r, _) in pipes.items()}
    setup = b""
    while chunk := os.read(readers["setup"], 65536):  # closed by the worker before the program starts
        setup += chunk
    os.close(readers.pop("setup"))
    handle = {"pid": pid, "readers": readers, "go": go_w, "ready": False, "setup": {}}
    status = parse_events(setup)
    if not status or "error" in status[0]:
        _finish(job, handle)
        detail = status[0]["error"] if status else "the worker ended before finishing its setup"
        raise OSError(f"worker setup failed: {detail}")
    handle["setup"] = status[0]
    return handle


def _finish(job: dict, handle: dict) -> tuple[int, float]:
    """Kill whatever is left of a worker's tree, reap it, close its pipes; (status, CPU seconds)."""
    pid = handle["pid"]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    uid = job["uid"]
    if os.getpid() == 1:  # pid 1 of the sandbox's PID namespace: every other process here is the program's
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)  # also catches processes that escaped the group with setsid()
    elif uid is not None:  # no PID namespace: kill what runs as the throwaway uid, from a forked helper
        helper = os.fork()
        if helper == 0:
            try:
                os.setresuid(uid, uid, uid)
                os.kill(-1, signal.SIGKILL)
            finally:
                os._exit(0)
        os.waitpid(helper, 0)
    _, status, usage = os.wait4(pid, 0)
    for fd in (*handle["readers"].values(), handle["go"]):
        with contextlib.suppress(OSError):
            os.close(fd)
    with contextlib.suppress(ChildProcessError):  # reap killed orphans: zombies count against RLIMIT_NPROC
        while os.waitpid(-1, os.WNOHANG)[0]:
            continue
    return status, usage.ru_utime + usage.ru_stime


_EVENT_NAMES = ("ready", "value", "raised", "exit", "finished", "compile_error", "setup_error")
_EVENT_FIELDS = ("i", "event", "type", "detail", "code", "json")
_KEPT_EVENTS = 64  # from each end of the stream


def program_events(data: bytes) -> list[dict]:
    """The worker's events (the program can write that pipe too) as flat records the evaluator can read
    whatever was written: known event names, known fields with a str/int/bool/None value, and only the
    first and last 64 event lines. A flood of lines, or a line nested thousands deep, costs nothing here."""
    spans, pos = [], 0
    while len(spans) < _KEPT_EVENTS and (hit := data.find(b'"event"', pos)) >= 0:
        end = data.find(b"\n", hit)
        end = len(data) if end < 0 else end
        spans.append((data.rfind(b"\n", 0, hit) + 1, end))
        pos = end
    tail, pos = [], len(data)
    while (
        len(tail) < _KEPT_EVENTS and (hit := data.rfind(b'"event"', spans[-1][1] if spans else 0, pos)) >= 0
    ):
        start = data.rfind(b"\n", 0, hit) + 1
        end = data.find(b"\n", hit)
        tail.append((start, len(data) if end < 0 else end))
        pos = start
    events = []
    for start, end in spans + tail[::-1]:
        for event in parse_events(data[start:end]):
            if event.get("event") in _EVENT_NAMES:
                fields = {key: event[key] for key in _EVENT_FIELDS if key in event}
                events.append({k: v for k, v in fields.items() if v is None or type(v) in (str, int, bool)})
    return events


def _texts(bufs: dict[str, bytearray]) -> dict:
    return {name: bufs[name].decode("utf-8", "replace") for name in ("out", "err")}


def _single(job: dict, index: int, raw_input: str, preamble: CodeType | None) -> dict:
    """One worker runs the whole program on one test (stdin or script kinds)."""
    started = time.monotonic()
    try:
        handle = _spawn(job, index, preamble, raw_input if job["kind"] == "stdin" else "")
    except OSError as exc:
        return {"i": index, "infra": str(exc)}
    bufs, reason = watch(handle["pid"], _streams(job, handle["readers"]), job["limits"]["wall_seconds"])
    status, cpu = _finish(job, handle)
    events = program_events(bytes(bufs["ev"]))
    return {"i": index, "reason": reason, "status": status, "cpu": cpu, **_texts(bufs), "events": events,
            "elapsed": time.monotonic() - started, "setup": handle["setup"]}  # fmt: skip


def _call(job: dict, index: int, raw_input: str, preamble: CodeType | None, state: dict) -> dict:
    """One call of a functional worker, started if needed (and restarted after a crash)."""
    wall = job["limits"]["wall_seconds"]
    handle = state["worker"]
    if handle is None:
        try:
            handle = state["worker"] = _spawn(job, index, preamble, "")
        except OSError as exc:
            return {"i": index, "infra": str(exc)}
        started = time.monotonic()

        def on_ready(event: dict) -> bool:
            handle["ready"] = event.get("event") == "ready"
            return event.get("event") not in ("ready", "compile_error", "setup_error")

        bufs, reason = watch(handle["pid"], _streams(job, handle["readers"]), wall, on_event=on_ready)
        if not handle["ready"]:  # it never got to its first call: report how it ended
            return _ended(job, state, index, bufs, reason, started, ready=False)
    started = time.monotonic()
    try:
        write_all(handle["go"], (json.dumps({"i": index, "input": raw_input}) + "\n").encode())
    except OSError:
        bufs = {name: bytearray() for name in ("out", "err", "ev")}
        return _ended(job, state, index, bufs, "exited", started, ready=True)

    def on_result(event: dict) -> bool:
        return event.get("i") != index

    bufs, reason = watch(handle["pid"], _streams(job, handle["readers"]), wall + _GRACE, on_event=on_result)
    elapsed = time.monotonic() - started
    if reason == "stopped":
        events = [e for e in program_events(bytes(bufs["ev"])) if e.get("i") == index][:1]
        return {"i": index, "reason": reason, "events": events, "elapsed": elapsed, "ready": True,
                "setup": handle["setup"]}  # fmt: skip
    return _ended(job, state, index, bufs, reason, started, ready=True)


def _ended(job: dict, state: dict, index: int, bufs: dict, reason: str, started: float, *, ready: bool):
    handle = state.pop("worker")
    state["worker"] = None
    status, cpu = _finish(job, handle)
    return {"i": index, "reason": reason, "status": status, "cpu": cpu, "err": _texts(bufs)["err"],
            "events": program_events(bytes(bufs["ev"])), "elapsed": time.monotonic() - started,
            "ready": ready, "setup": handle["setup"]}  # fmt: skip
