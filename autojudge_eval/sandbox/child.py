"""The worker the launcher forks for each test (``worker_main``): its setup, then the program.

The launcher (``sandbox.launcher``) is a fresh interpreter that gets the program, the test inputs and the
limits, never an expected output: the evaluator keeps those and judges (``sandbox.judge``). A worker sets
rlimits, joins the memory cgroup, drops privileges, installs the seccomp filter (built here by hand),
closes its setup pipe and runs the program, writing events (``ready``, ``value``, ``raised``, ``exit``,
``finished``) that are data for the evaluator, never a verdict. Standard library only (see
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
from types import CodeType, FrameType

from autojudge_eval.sandbox.common import (
    CALL_KINDS,
    DETAIL_CHARS,
    OUTPUT_CHARS,
    TestTimeout,
    ValueTooComplex,
    decode_value,
    encode_value,
    write_all,
)

__all__ = ["EVENT_FD", "GO_FD", "SETUP_FD", "TestTimeout", "seccomp_program", "worker_main"]

EVENT_FD, GO_FD, SETUP_FD = 1000, 1001, 1002  # a worker's descriptors (SETUP_FD closes before the program)


_LIBC = ctypes.CDLL(None, use_errno=True)


# ---------------------------------------------------------------------------------------------------------
# The worker: a fork of the launcher. Setup first (its failures are the sandbox's), then the program.


def worker_main(
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
