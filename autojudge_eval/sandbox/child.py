"""The launcher's test loop (``serve``), and the worker it forks for each test, which runs the program.

The launcher (``sandbox.launcher``) is a fresh interpreter that gets the program, the test inputs and the
limits, never an expected output: the evaluator keeps those and judges (``sandbox.judge``). For each
"run i" command ``serve`` forks a worker (``_worker``) that sets rlimits, joins the memory cgroup, drops
privileges, installs the seccomp filter and runs the program; the launcher watches it with its own clock
(the window is fixed when the test starts; nothing the program does extends it), kills what is left of its
tree, and reports what the program produced: stdout, stderr, exit status, CPU time and the worker's
events. Those events are data for the evaluator to judge, never a verdict. Standard library only (see
``sandbox.common``).
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
import struct
import sys
import time
from types import CodeType, FrameType

from autojudge_eval.sandbox.common import (
    CALL_KINDS,
    DETAIL_CHARS,
    OUTPUT_CHARS,
    PREAMBLE,
    PREAMBLE_MODULES,
    TestTimeout,
    ValueTooComplex,
    decode_value,
    encode_value,
    parse_events,
    watch,
    write_all,
)

__all__ = ["EVENT_FD", "PREAMBLE", "PREAMBLE_MODULES", "TestTimeout", "seccomp_program", "serve"]

EVENT_FD, GO_FD, SETUP_FD = 1000, 1001, 1002  # a worker's descriptors (SETUP_FD closes before the program)
_GRACE = 0.25  # seconds past the per-test wall limit before the launcher kills a worker


_LIBC = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------------------------------------------------
# The launcher's side (trusted: no program code ever runs in this process).


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
        _worker(job, first, preamble, stdin_fd, writers, go_r)
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


# ---------------------------------------------------------------------------------------------------------
# The worker: a fork of the launcher. Setup first (its failures are the sandbox's), then the program.


def _worker(
    job: dict, first: int, preamble: CodeType | None, stdin_fd: int, writers: dict[str, int], go_r: int
) -> None:
    """Set up, run the program on tests ``first``.. and ``_exit``; never returns."""
    try:
        os.dup2(writers["setup"], SETUP_FD)
        os.dup2(writers["ev"], EVENT_FD)
        os.dup2(go_r, GO_FD)
        layers = _prepare(job, first, stdin_fd, writers)
        write_all(SETUP_FD, (json.dumps({"layers": layers}) + "\n").encode())
        os.close(SETUP_FD)  # from here on nothing the process writes can reach the setup channel
    except BaseException as exc:
        with contextlib.suppress(BaseException):
            write_all(SETUP_FD, (json.dumps({"error": f"{type(exc).__name__}: {exc}"}) + "\n").encode())
        os._exit(70)
    status = 1
    try:
        runner = _run_calls if job["kind"] in CALL_KINDS else _run_program
        status = runner(job, first, preamble)
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):  # the program may have replaced them
                stream.flush()
        os._exit(status)


def _prepare(job: dict, first: int, stdin_fd: int, writers: dict[str, int]) -> list[str]:
    os.setpgid(0, 0)
    for fd, target in ((stdin_fd, 0), (writers["out"], 1), (writers["err"], 2)):
        os.dup2(fd, target)
    layers = []
    if job.get("cgroup_fd") is not None:  # join the per-program memory cgroup, then forget the handle
        os.write(job["cgroup_fd"], b"0")
        layers.append("memcg")
    os.closerange(3, EVENT_FD)
    os.closerange(SETUP_FD + 1, os.sysconf("SC_OPEN_MAX"))
    os.chdir(job["workdir"])
    limits = job["limits"]
    calls = job["n_tests"] - first if job["kind"] in CALL_KINDS else 1
    cpu = int(limits["cpu_seconds"] * calls + 0.999)
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    for name, value in (
        ("AS", "address_space_bytes"),
        ("FSIZE", "file_size_bytes"),
        ("NPROC", "max_processes"),
    ):
        resource.setrlimit(getattr(resource, f"RLIMIT_{name}"), (limits[value], limits[value]))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (0, 0))
    _drop_privileges(job)
    _LIBC.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    _LIBC.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG: die with the launcher
    os.umask(0o077)
    program = seccomp_program()
    if program is None:
        layers.append("seccomp-unavailable")
    else:
        try:
            _install_seccomp(program)
            layers.append("seccomp")
        except OSError:  # labelled, so a result says it ran without the filter
            layers.append("seccomp-failed")
    return layers


def _drop_privileges(job: dict) -> None:
    uid = job["uid"]
    if job["nest_userns"]:  # a fresh user namespace: no capabilities over the mounts set up above
        if _LIBC.unshare(0x10000000):  # CLONE_NEWUSER
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWUSER) failed")
    elif uid is not None:
        os.setgroups([])
        os.setresgid(uid, uid, uid)
        os.setresuid(uid, uid, uid)
    if os.geteuid() == 0 and not job["nest_userns"]:
        raise PermissionError("refusing to run generated code as root")


# ---------------------------------------------------------------------------------------------------------
# The seccomp filter (classic BPF, built by hand: the sandboxed process uses the standard library only).

_X86_64 = 0xC000003E  # AUDIT_ARCH_X86_64
_ALLOW, _ERRNO = 0x7FFF0000, 0x00050000
_EPERM, _ENOSYS = 1, 38
# x86_64 numbers of what a grader's program never needs.
_DENIED_SYSCALLS = {
    "ptrace": 101, "process_vm_readv": 310, "process_vm_writev": 311, "kcmp": 312, "pidfd_getfd": 438,
    "keyctl": 250, "add_key": 248, "request_key": 249,
    "unshare": 272, "setns": 308, "mount": 165, "umount2": 166, "pivot_root": 155, "chroot": 161,
    "open_tree": 428, "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
    "mount_setattr": 442, "name_to_handle_at": 303, "open_by_handle_at": 304,
    "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427,
    "bpf": 321, "perf_event_open": 298, "userfaultfd": 323, "memfd_create": 319, "memfd_secret": 447,
    "shmget": 29, "shmat": 30, "shmctl": 31, "mq_open": 240, "socketpair": 53,
    "kexec_load": 246, "kexec_file_load": 320, "init_module": 175, "finit_module": 313,
    "delete_module": 176, "reboot": 169, "swapon": 167, "swapoff": 168, "acct": 163, "quotactl": 179,
    "lookup_dcookie": 212, "iopl": 172, "ioperm": 173, "personality": 135, "vhangup": 153,
}  # fmt: skip
_SOCKET, _CLONE, _CLONE3 = 41, 56, 435
_DENIED_FAMILIES = (1, 16)  # AF_UNIX, AF_NETLINK
_NAMESPACE_FLAGS = 0x7E020080  # CLONE_NEWNS|NEWCGROUP|NEWUTS|NEWIPC|NEWUSER|NEWPID|NEWNET|NEWTIME


def seccomp_program() -> bytes | None:
    """The filter as packed ``sock_filter`` entries, or None on an architecture it does not know."""
    if os.uname().machine != "x86_64":
        return None
    ld, jeq, jset, ret = 0x20, 0x15, 0x45, 0x06

    def op(code: int, jt: int, jf: int, k: int) -> bytes:
        return struct.pack("HBBI", code, jt, jf, k)

    deny = sorted(_DENIED_SYSCALLS.values())
    prog = [op(ld, 0, 0, 4), op(jeq, 1, 0, _X86_64), op(ret, 0, 0, 0x80000000)]  # other arch: kill
    prog += [op(ld, 0, 0, 0), op(0x35, 0, 1, 0x40000000), op(ret, 0, 0, _ERRNO | _ENOSYS)]  # x32 ABI
    for number in deny:
        prog += [op(jeq, 0, 1, number), op(ret, 0, 0, _ERRNO | _EPERM)]
    prog += [op(jeq, 0, 1, _CLONE3), op(ret, 0, 0, _ERRNO | _ENOSYS)]  # flags unreadable: libc falls back
    prog += [op(jeq, 0, 3, _CLONE), op(ld, 0, 0, 16), op(jset, 0, 1, _NAMESPACE_FLAGS)]
    prog += [op(ret, 0, 0, _ERRNO | _EPERM)]
    prog += [op(ld, 0, 0, 0), op(jeq, 0, 1 + 2 * len(_DENIED_FAMILIES), _SOCKET), op(ld, 0, 0, 16)]
    for family in _DENIED_FAMILIES:
        prog += [op(jeq, 0, 1, family), op(ret, 0, 0, _ERRNO | _EPERM)]
    prog += [op(ret, 0, 0, _ALLOW)]
    return b"".join(prog)


def _install_seccomp(program: bytes) -> None:
    class _Fprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buffer = ctypes.create_string_buffer(program)
    fprog = _Fprog(len(program) // 8, ctypes.addressof(buffer))
    if _LIBC.prctl(22, 2, ctypes.byref(fprog), 0, 0):  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


# ---------------------------------------------------------------------------------------------------------
# Running the program (inside the worker, after setup).


def _event(record: dict) -> None:
    with contextlib.suppress(OSError):
        write_all(EVENT_FD, (json.dumps(record) + "\n").encode())


def _describe(exc: BaseException) -> dict:
    try:
        import traceback  # imported by the worker that needs it, not by every launcher

        tb = exc.__traceback__.tb_next if exc.__traceback__ else None  # drop the worker's own frame
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    except BaseException:  # a hostile __str__ must not stop the report
        text = type(exc).__name__
    return {"type": type(exc).__name__, "detail": str(text)[-DETAIL_CHARS:]}


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


def _run_calls(job: dict, first: int, preamble: CodeType | None) -> int:
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
    go = os.fdopen(GO_FD, "r", encoding="utf-8")
    while line := go.readline():
        command = json.loads(line)
        _event({"i": command["i"], **_call_once(job, method, command["input"])})
    return 0


def _on_alarm(signum: int, frame: FrameType | None) -> None:
    raise TestTimeout()


def _call_once(job: dict, method, raw_args: str) -> dict:
    tagged = job["kind"] == "call"
    try:
        signal.setitimer(signal.ITIMER_REAL, job["limits"]["wall_seconds"])
        if tagged:
            value = method(*decode_value(json.loads(raw_args)))
        else:
            value = method(*[json.loads(line) for line in raw_args.split("\n")])
        signal.setitimer(signal.ITIMER_REAL, 0)
    except BaseException as exc:
        signal.setitimer(signal.ITIMER_REAL, 0)
        return {"event": "raised", **_describe(exc)}
    limit = job["limits"]["max_stdout_bytes"]
    try:
        if tagged:
            text = json.dumps(encode_value(value))
        else:
            text = json.dumps(list(value) if isinstance(value, tuple) else value)
        if len(text) > limit:
            return {"event": "raised", "type": "OutputLimit", "detail": "the returned value is too large"}
    except ValueTooComplex as exc:
        return {"event": "raised", "type": "TypeError", "detail": f"unserialisable return value: {exc}"}
    except BaseException:
        try:
            shown = repr(value)[:OUTPUT_CHARS]
        except BaseException:
            shown = "<unprintable value>"
        return {"event": "value", "json": json.dumps(shown)}
    return {"event": "value", "json": text}
