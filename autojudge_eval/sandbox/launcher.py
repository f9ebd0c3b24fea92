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

import ctypes
import json
import os

from autojudge_eval.sandbox import child as sandbox_child
from autojudge_eval.sandbox import mounts as sandbox_mounts
from autojudge_eval.sandbox.common import write_all

__all__ = ["main"]

_LIBC = ctypes.CDLL(None, use_errno=True)


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
        sandbox_child.serve(job, commands, 1)
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
