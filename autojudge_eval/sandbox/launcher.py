"""The sandbox launcher: a script the evaluator runs by path, as its own process in its own session.

The evaluator starts ``python -s -c <bootstrap> <this file> <job.json>`` (``sandbox.runner._launcher_argv``),
as pid 1 of new namespaces where ``unshare`` works. ``main`` reads and deletes the job, pivots into the
minimal root (``sandbox.mounts``), then starts the runner (``sandbox.child``) as a fresh interpreter that
gets the program and the inputs but never the expected outputs. For each test it asks the runner to run
it, judges the report here (the runner's reports are data: the program's own events can fail a test but
never pass it, and never make it look like the sandbox's fault) and prints one JSON line per test. It
never runs candidate code itself and is not dumpable. Standard library only: the siblings are imported
through a bare ``autojudge_eval`` package, so ``autojudge_eval/__init__`` (which loads lm-eval) never
runs here, and this folder is never on ``sys.path``.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import select
import signal
import sys
import time
import types


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

from autojudge_eval.sandbox import mounts as sandbox_mounts  # noqa: E402
from autojudge_eval.sandbox.common import (  # noqa: E402
    CALL_KINDS,
    DETAIL_CHARS,
    OUTPUT_CHARS,
    PREAMBLE_MODULES,
    TestTimeout,
    Verdict,
    bounded,
    compare_stdout,
    compare_value,
    judge_call,
    parse_events,
    stripped_lines,
    write_all,
)

_MEMORY_HINTS = ("MemoryError", "Cannot allocate memory", "out of memory", "bad_alloc")
_LIBC = ctypes.CDLL(None, use_errno=True)
try:  # the built-in sha256: loading OpenSSL through hashlib costs more than the hashing here
    from _sha256 import sha256 as _sha256
except ImportError:  # pragma: no cover - builds without the built-in module
    from hashlib import sha256 as _sha256
# The runner's interpreter: ``-s -S`` (no site-packages, the standard library only), and this bootstrap,
# which imports the preamble's modules, then reads the two modules it needs (common, child, compiled and
# marshalled by the evaluator) and its job from fd 6, so nothing of the checkout is visible inside.
_RUNNER_BOOTSTRAP = (
    "import json, os, sys, types\n"
    "sys.path[:] = [p for p in sys.path if p]\n"
    "for name in sys.argv[1:]:\n"  # the preamble's modules, imported while the launcher sets up
    "    __import__(name)\n"
    "data = bytearray()\n"
    "while chunk := os.read(6, 1 << 20):\n"
    "    data += chunk\n"
    "os.close(6)\n"
    "boot = json.loads(data)\n"
    "del data\n"
    "for name in ('autojudge_eval', 'autojudge_eval.sandbox'):\n"
    "    sys.modules[name] = types.ModuleType(name)\n"
    "    sys.modules[name].__path__ = []\n"
    "import binascii, marshal\n"
    "for name, code in boot['modules']:\n"
    "    module = sys.modules[name] = types.ModuleType(name)\n"
    "    exec(marshal.loads(binascii.a2b_base64(code)), module.__dict__)\n"
    "sys.modules['autojudge_eval.sandbox.child'].runner_main(boot['job'])\n"
)


def main(job_path: str) -> None:
    sys.path[:] = [p for p in sys.path if p not in ("", ".")]
    os.umask(0o022)
    with open(job_path, encoding="utf-8") as fh:
        job = json.load(fh)
    os.unlink(job_path)  # nothing below the launcher ever sees the job (nor the expected outputs)
    _LIBC.prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0: no process of the same uid can read our memory
    modules = job.pop("modules")  # compiled by the evaluator, run by the runner
    cgroup = _open_cgroup(job)
    _LIBC.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER: orphans come to us
    # Start the runner's interpreter now, so it imports while we build the minimal root; pivot_root moves
    # its root and working directory too, and it gets the program only after that.
    runner = _Runner(job, cgroup, os.path.realpath(sys.executable))
    parts, warnings, workdir = _isolate(job)
    _emit({"isolation": ["exec-runner", *parts], "warnings": warnings})
    runner.boot(job, modules, workdir)
    layers: list[str] = []
    try:
        _judge_all(job, runner, cgroup, layers)
    finally:
        runner.close()
    if cgroup["procs"] is not None:
        parts.append("memcg" if "memcg" in layers else "memcg-unused")
    elif job.get("cgroup"):
        parts.append("memcg-unavailable")
    parts += [layer for layer in layers if layer.startswith("seccomp")][:1]
    _emit({"isolation": ["exec-runner", *parts], "warnings": []})
    _emit({"done": True})


def _emit(record: dict) -> None:
    write_all(1, (json.dumps(record) + "\n").encode())


def _open_cgroup(job: dict) -> dict:
    """Handles on the per-program memory cgroup the evaluator made (None where there is none)."""
    found = {"procs": None, "events": None, "oom": 0}
    spec = job.get("cgroup")
    if spec:
        try:
            found["procs"] = os.open(spec["procs"], os.O_WRONLY | os.O_CLOEXEC)
            found["events"] = os.open(spec["events"], os.O_RDONLY | os.O_CLOEXEC)
            found["oom"] = _oom_kills(found)
        except OSError:
            found = {"procs": None, "events": None, "oom": 0}
    return found


def _oom_kills(cgroup: dict) -> int:
    if cgroup["events"] is None:
        return 0
    text = os.pread(cgroup["events"], 4096, 0).decode()
    return sum(int(line.split()[1]) for line in text.splitlines() if line.startswith("oom_kill "))


def _isolate(job: dict) -> tuple[list[str], list[str], str]:
    """Pivot into the minimal root (namespace modes; else the older read-only lockdown); report what applied
    and the working directory the program gets."""
    parts, warnings, workdir = [], [], job["workdir"]
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
    return [*parts, "rlimits"], warnings, workdir


class _Runner:
    """The runner process (``sandbox.child.runner_main``), a fresh interpreter that gets the program, the
    inputs and the limits, never the expected outputs, and answers "run i" with what the program did."""

    def __init__(self, job: dict, cgroup: dict, python: str) -> None:
        self.inputs, self.has_cgroup = job["inputs"], cgroup["procs"] is not None
        boot, self.boot_w = os.pipe()
        cmd_r, self.cmd = os.pipe()
        self.reports, rep_w = os.pipe()
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONHASHSEED": "0"}
        env.update(PYTHONDONTWRITEBYTECODE="1")
        env.update(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
        self.pid = os.fork()
        if self.pid == 0:
            try:
                moves = [(cmd_r, 3), (rep_w, 4), (cgroup["procs"], 5), (boot, 6)]
                high = [(None if fd is None else fcntl.fcntl(fd, fcntl.F_DUPFD, 100), to) for fd, to in moves]
                for fd, target in high:  # via fresh numbers, so no source is overwritten before it moves
                    if fd is not None:
                        os.dup2(fd, target)
                os.closerange(7, os.sysconf("SC_OPEN_MAX"))
                os.chdir("/")
                preload = [*PREAMBLE_MODULES, "typing"] if job["preamble"] else []
                os.execve(python, [python, "-s", "-S", "-c", _RUNNER_BOOTSTRAP, *preload], env)
            except BaseException as exc:
                with contextlib.suppress(BaseException):
                    write_all(2, f"sandbox: cannot start the runner: {exc!r}\n".encode())
            finally:
                os._exit(127)
        for fd in (cmd_r, rep_w, boot):
            os.close(fd)
        self.buffer = b""

    def boot(self, job: dict, modules: list, workdir: str) -> None:
        """Hand the runner its modules and its job (no expected outputs), and wait until it is ready."""
        keys = ("code", "kind", "func_name", "limits", "uid", "nest_userns", "preamble")
        inner = {key: job[key] for key in keys}
        inner.update(n_tests=len(job["inputs"]), workdir=workdir, cgroup_fd=5 if self.has_cgroup else None)
        with contextlib.suppress(OSError):
            write_all(self.boot_w, json.dumps({"modules": modules, "job": inner}).encode())
        os.close(self.boot_w)
        self.ready = self._read(30.0) == {"runner": "ready"}
        if not self.ready:
            with contextlib.suppress(ChildProcessError):
                write_all(2, f"sandbox: the runner ended with status {os.waitpid(self.pid, 0)[1]}\n".encode())

    def _read(self, timeout: float) -> dict | None:
        """The runner's next report, or None when it ended (or said nothing for ``timeout`` seconds)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([self.reports], [], [], remaining)[0]:
                return None
            chunk = os.read(self.reports, 1 << 20)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        events = parse_events(line)
        return events[0] if events else None

    def run(self, index: int, timeout: float) -> dict | None:
        try:
            command = {"run": index, "input": self.inputs[index]}
            write_all(self.cmd, (json.dumps(command) + "\n").encode())
        except OSError:
            return None
        return self._read(timeout)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.cmd)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self.pid, 0)
        os.close(self.reports)


def _judge_all(job: dict, runner: _Runner, cgroup: dict, layers: list[str]) -> None:
    """Ask the runner for each test in turn and judge its report here, against the expected outputs."""
    limits, total = job["limits"], len(job["inputs"])
    if not runner.ready:
        for i in range(total):
            _emit(_outcome(i, Verdict.SANDBOX_ERROR, "the sandbox's runner process did not start", "", 0.0))
        return
    calls = job["kind"] in CALL_KINDS
    index = 0
    while index < total:
        # The runner's own watch ends each test; this bound only catches a runner that stopped answering.
        report = runner.run(index, 2 * limits["wall_seconds"] + 30.0)
        if report is None or report.get("i") != index:  # the runner died after a program ran: its doing
            outcomes = [_outcome(index, Verdict.RUNTIME_ERROR, "the sandbox's runner ended during this test",
                                 "", 0.0)]  # fmt: skip
        elif report.get("infra"):
            detail = f"the sandbox could not start the program: {report['infra']}"
            outcomes = [_outcome(i, Verdict.SANDBOX_ERROR, detail, "", 0.0) for i in range(index, total)]
        else:
            layers[:] = report.get("setup", {}).get("layers", layers)
            judge = _judge_call if calls else _judge_single
            outcomes = judge(job, index, report, cgroup)
        for outcome in outcomes:
            _emit(outcome)
        index += len(outcomes)
        failed = any(o["verdict"] != Verdict.PASSED.value for o in outcomes)
        if report is None or (limits["fail_fast"] and failed):
            break


def _judge_single(job: dict, index: int, report: dict, cgroup: dict) -> list[dict]:
    """A stdin/script test: how the program ended, then its stdout against the expected output."""
    stdout, stderr = report["out"], report["err"]
    verdict, detail = _program_verdict(job, report, cgroup)
    if verdict is None:
        verdict, detail = _completed_verdict(job, index, stdout, report)
    output = "\n".join(stripped_lines(stdout)) if job["kind"] == "stdin" else ""
    elapsed = report["elapsed"]
    if verdict is Verdict.COMPILE_ERROR:  # every other test would end the same way
        return [_outcome(i, verdict, detail, "", elapsed) for i in range(index, len(job["inputs"]))]
    del stderr
    return [_outcome(index, verdict, detail, output, elapsed)]


def _judge_call(job: dict, index: int, report: dict, cgroup: dict) -> list[dict]:
    """A functional (LiveCodeBench) or call (HumanEval) test: the returned value, compared here."""
    wall, elapsed = job["limits"]["wall_seconds"], report["elapsed"]
    events = report.get("events", [])
    if report["reason"] == "stopped" and events and events[0].get("i") == index:
        event = events[0]
        if elapsed > wall + 0.1:  # the parent's clock, whatever the program did to its own timer
            verdict, detail, output = Verdict.TIMEOUT, f"the call took {elapsed:.2f} s (limit {wall} s)", ""
        elif event.get("event") == "value" and isinstance(event.get("json"), str):
            compare = judge_call if job["kind"] == "call" else compare_value
            ok, detail, output = compare(event["json"], job["expected"][index])
            verdict = Verdict.PASSED if ok else Verdict.WRONG_ANSWER
        else:
            (verdict, detail), output = _event_verdict(job["kind"], event), ""
        return [_outcome(index, verdict, detail, output, elapsed)]
    verdict, detail = _death_verdict(job, report, cgroup)
    if not report.get("ready"):  # it never got to its first call: every call would end the same way
        named = [e for e in events if e.get("event") in ("compile_error", "setup_error")]
        if named and verdict in (None, Verdict.RUNTIME_ERROR):
            verdict, detail = _event_verdict(job["kind"], named[0])
        if verdict is None:
            verdict, detail = Verdict.RUNTIME_ERROR, "the program exited before its first call"
        return [_outcome(i, verdict, detail, "", elapsed) for i in range(index, len(job["inputs"]))]
    if verdict is None:
        verdict, detail = Verdict.RUNTIME_ERROR, "the program exited before returning"
    return [_outcome(index, verdict, detail, "", elapsed)]


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
        return Verdict.RUNTIME_ERROR, f"the program called exit({event.get('code')!r}) before finishing"
    return Verdict.RUNTIME_ERROR, detail or f"the program reported {str(name)[:50]!r}"


def _program_verdict(job: dict, report: dict, cgroup: dict) -> tuple[Verdict | None, str]:
    """Verdict of a stdin/script run from how it ended, or (None, "") when it ended normally (exit status
    0). A failure event counts only as a failure; a success needs the real exit status 0 as well."""
    if report["reason"] != "exited":
        return _death_verdict(job, report, cgroup)
    death = _death_verdict(job, report, cgroup)
    events = report["events"]
    failures = [e for e in events if e.get("event") in ("compile_error", "raised", "setup_error")]
    failures += [e for e in events if e.get("event") == "exit" and e.get("code") != 0]
    if failures and (death[0] is None or death[0] is Verdict.RUNTIME_ERROR):
        return _event_verdict(job["kind"], failures[0])
    if death[0] is not None:
        return death
    if job["kind"] == "script" and not any(e.get("event") == "finished" for e in events):
        if any(e.get("event") == "exit" for e in events):
            return Verdict.RUNTIME_ERROR, "the program called exit(0) before its checks finished"
        return Verdict.RUNTIME_ERROR, "the program exited (status 0) before its checks finished"
    return None, ""


def _death_verdict(job: dict, report: dict, cgroup: dict) -> tuple[Verdict | None, str]:
    limits, reason = job["limits"], report["reason"]
    status, cpu, stderr = report["status"], report.get("cpu", 0.0), report.get("err", "")
    if reason == "timeout":
        return Verdict.TIMEOUT, f"wall-clock limit of {limits['wall_seconds']} s per test exceeded"
    if reason.startswith("overflow:"):
        stream = {"out": "stdout", "err": "stderr", "ev": "result stream"}[reason.split(":")[1]]
        return Verdict.OUTPUT_LIMIT, f"{stream} exceeded its cap and the program was killed"
    if status is None:
        return None, ""
    oom_before, cgroup["oom"] = cgroup["oom"], _oom_kills(cgroup)
    memory = cgroup["oom"] > oom_before or any(hint in stderr for hint in _MEMORY_HINTS)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu >= limits["cpu_seconds"]):
            return Verdict.TIMEOUT, f"CPU limit of {limits['cpu_seconds']} s exceeded ({cpu:.2f} s used)"
        if sig == signal.SIGXFSZ:
            return Verdict.OUTPUT_LIMIT, "file size limit exceeded"
        name = signal.Signals(sig).name
        if cgroup["oom"] > oom_before:
            return Verdict.MEMORY_LIMIT, f"killed by {name}: the program's memory cgroup ran out"
        return (
            Verdict.MEMORY_LIMIT if memory else Verdict.RUNTIME_ERROR
        ), f"killed by {name}: {stderr[-300:]}"
    code = os.WEXITSTATUS(status)
    if code == 0:
        return None, ""
    return (Verdict.MEMORY_LIMIT if memory else Verdict.RUNTIME_ERROR), f"exit status {code}: {stderr[-300:]}"


def _completed_verdict(job: dict, index: int, stdout: str, report: dict) -> tuple[Verdict, str]:
    if job["kind"] == "script":
        return Verdict.PASSED, (
            "passed an in-process check(candidate): this test could not be converted, and code in the "
            "program's own process could forge this pass"
        )
    ok, detail = compare_stdout(stdout, job["expected"][index])
    return (Verdict.PASSED if ok else Verdict.WRONG_ANSWER), detail


def _outcome(index: int, verdict: Verdict, detail: str, output: str, elapsed: float) -> dict:
    digest = _sha256(output.encode("utf-8", "surrogatepass")).hexdigest()
    detail, output = bounded(detail, DETAIL_CHARS), bounded(output, OUTPUT_CHARS)
    return {"i": index, "verdict": verdict.value, "detail": detail, "output": output, "sha": digest,
            "elapsed": round(elapsed, 4)}  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[-1])
