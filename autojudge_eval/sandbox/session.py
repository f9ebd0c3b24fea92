"""The evaluator's conversation with one launcher: start it, send it JSON lines, read its reports.

Everything here runs under one deadline (the program's outer wall budget): a launcher that stops reading
or answering cannot hold the evaluator past it. Reports are bounded; a launcher that sends more than the
cap is treated as ended. The launcher is in its own session and is killed with it.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
import marshal
import os
import selectors
import shutil
import signal
import subprocess
import time
from pathlib import Path

from autojudge_eval.errors import SandboxError
from autojudge_eval.sandbox.values import IsolationMode

HERE = Path(__file__).parent
# The launcher's interpreter starts with ``-s -S`` (the standard library only) and this bootstrap. It moves
# the command pipe off fd 0 (workers get their own stdin), reads its modules, compiled and marshalled by
# the evaluator, and its job from the first line, and runs ``sandbox.launcher.main``: nothing of the
# checkout is read inside the sandbox.
BOOTSTRAP = (
    "import binascii, json, marshal, os, sys, types\n"
    "sys.path[:] = [p for p in sys.path if p]\n"
    "commands = os.fdopen(os.dup(0), 'rb')\n"
    "null = os.open('/dev/null', os.O_RDONLY)\n"
    "os.dup2(null, 0)\n"
    "os.close(null)\n"
    "boot = json.loads(commands.readline())\n"
    "for name in ('autojudge_eval', 'autojudge_eval.sandbox'):\n"
    "    sys.modules[name] = types.ModuleType(name)\n"
    "    sys.modules[name].__path__ = []\n"
    "for name, code in boot.pop('modules'):\n"
    "    module = sys.modules[name] = types.ModuleType(name)\n"
    "    exec(marshal.loads(binascii.a2b_base64(code)), module.__dict__)\n"
    "del module, code, name\n"
    "sys.modules['autojudge_eval.sandbox.launcher'].main(boot.pop('job'), commands)\n"
)
_SIBLINGS = ("common", "mounts", "child", "launcher")  # in import order
_UNSHARE_FLAGS = ("--mount", "--net", "--pid", "--ipc", "--uts", "--fork", "--kill-child", "--mount-proc")
ENDED = "ended"
TIMEOUT = "timeout"


@functools.lru_cache(maxsize=1)
def launcher_modules() -> tuple[tuple[str, str], ...]:
    """The launcher's modules, compiled once per evaluator process and marshalled (base64)."""
    found = []
    for name in _SIBLINGS:
        path = HERE / f"{name}.py"
        if not path.is_file():
            raise SandboxError(f"a sandbox module is missing: expected {path}")
        code = compile(path.read_text(encoding="utf-8"), f"<sandbox {name}>", "exec")
        found.append((f"autojudge_eval.sandbox.{name}", base64.b64encode(marshal.dumps(code)).decode()))
    return tuple(found)


def unshare_prefix(mode: IsolationMode) -> tuple[str, ...]:
    exe = shutil.which("unshare")
    if mode is IsolationMode.RLIMITS_ONLY:
        return ()
    if exe is None:
        raise SandboxError(f"isolation {mode.value} needs util-linux 'unshare' on PATH; it was not found")
    user = ("--user", "--map-root-user") if mode is IsolationMode.USER_NAMESPACE else ()
    return (exe, *user, *_UNSHARE_FLAGS, "--")


class Launcher:
    """One launcher process and its pipes, all read and written under ``deadline`` (``time.monotonic``)."""

    def __init__(self, python: str, mode: IsolationMode, env: dict[str, str], deadline: float, cap: int):
        argv = [*unshare_prefix(mode), python, "-s", "-S", "-c", BOOTSTRAP]
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE, cwd="/", env=env, start_new_session=True)  # fmt: skip
        except OSError as exc:
            raise SandboxError(f"cannot start the sandbox launcher {argv[0]!r}: {exc}") from exc
        self.deadline, self.cap = deadline, cap
        self.out, self.err, self.sel = bytearray(), bytearray(), selectors.DefaultSelector()
        self.fds = {"in": self.proc.stdin.fileno(), "out": self.proc.stdout.fileno()}
        self.fds["err"] = self.proc.stderr.fileno()
        for name, fd in self.fds.items():
            os.set_blocking(fd, False)
            if name != "in":
                self.sel.register(fd, selectors.EVENT_READ, name)
        self.open = {"out", "err"}

    def send(self, record: dict) -> str | None:
        """Write one JSON line; None when written, else ENDED (the launcher is gone) or TIMEOUT."""
        view = memoryview((json.dumps(record) + "\n").encode())
        key = self.sel.register(self.fds["in"], selectors.EVENT_WRITE, "in")
        try:
            while view:
                try:
                    view = view[os.write(key.fd, view) :]
                    continue
                except BlockingIOError:
                    pass
                except OSError:
                    return ENDED
                reason = self._pump()
                if reason is not None:
                    return reason
        finally:
            self.sel.unregister(key.fd)
        return None

    def read(self) -> dict | str:
        """The launcher's next JSON line (a dict), or ENDED / TIMEOUT."""
        while (end := self.out.find(b"\n")) < 0:
            if "out" not in self.open or len(self.out) > self.cap:
                return ENDED
            if self._pump() == TIMEOUT:
                return TIMEOUT
        line = bytes(self.out[:end])
        del self.out[: end + 1]
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            return ENDED
        return record if isinstance(record, dict) else ENDED

    def _pump(self) -> str | None:
        """Wait for the pipes once and read what is there; a reason when it cannot go on, else None."""
        remaining = self.deadline - time.monotonic()
        ready = self.sel.select(remaining) if remaining > 0 else []
        if not ready:
            return TIMEOUT
        reason = None
        for key, _ in ready:
            if key.data == "in":
                continue
            try:
                chunk = os.read(key.fd, 1 << 20)
            except BlockingIOError:
                continue
            if not chunk:
                self.sel.unregister(key.fd)
                self.open.discard(key.data)
                if key.data == "out":
                    reason = ENDED
            elif key.data == "out":
                self.out += chunk
            elif len(self.err) < 65536:
                self.err += chunk[: 65536 - len(self.err)]
        return ENDED if not self.open else reason

    def stderr(self) -> str:
        return self.err.decode("utf-8", "replace")

    def close(self, *, graceful: bool) -> int | None:
        """Close the command pipe; with ``graceful``, give the launcher until the deadline (at most 2 s) to
        finish its last worker and exit; then kill its session. Returns its exit status."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        returncode = None
        if graceful:
            with contextlib.suppress(subprocess.TimeoutExpired):
                wait = min(2.0, max(0.0, self.deadline - time.monotonic()))
                returncode = self.proc.wait(timeout=wait)
        if self.proc.pid != os.getpgrp():  # start_new_session made the launcher its own group leader
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
        if returncode is None:
            returncode = self.proc.wait()
        with contextlib.suppress(OSError):
            self.sel.close()
        for stream in (self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()
        return returncode
