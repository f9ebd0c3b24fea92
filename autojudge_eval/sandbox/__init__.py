"""Run untrusted Python programs against tests, each in a throwaway sandboxed process tree.

The interface is one call, ``run_program(code, tests, limits) -> ExecResult``, plus ``run_many`` (a bounded
thread pool driving subprocesses) and ``CachedExecutor`` (an LRU, optionally backed by JSONL) for mining.
Import everything from here; the code lives in these modules (see docs/sandbox.md):

- ``sandbox.values``: typed tests, limits, isolation modes and results.
- ``sandbox.runner``: isolation probing, ``run_program`` and ``run_many`` (the evaluator side, which starts
  one launcher process per program, judges its reports and never runs candidate code).
- ``sandbox.session`` and ``sandbox.judge``: the evaluator's conversation with a launcher, and judging.
- ``sandbox.cache``: ``behaviour_signature``, ``same_behaviour``, ``digest_tests``, ``CachedExecutor``.
- ``sandbox.common``: ``Verdict``, ``compare_stdout`` and the pipe watch, shared by both sides.
- ``sandbox.launcher``, ``sandbox.mounts`` and ``sandbox.child``: the launcher process (a fresh interpreter
  that never sees an expected output), its minimal root, and the forked worker that runs the program.
  Standard library only.
"""

from __future__ import annotations

from autojudge_eval.sandbox.cache import CachedExecutor, behaviour_signature, digest_tests, same_behaviour
from autojudge_eval.sandbox.common import DETAIL_CHARS, OUTPUT_CHARS, Verdict, compare_stdout
from autojudge_eval.sandbox.runner import default_workers, probe_isolation, run_many, run_program
from autojudge_eval.sandbox.values import (
    DEFAULT_LIMITS,
    ExecResult,
    IsolationMode,
    ProgramJob,
    SandboxLimits,
    TestCase,
    TestKind,
    TestOutcome,
)

__all__ = [
    "DEFAULT_LIMITS",
    "DETAIL_CHARS",
    "OUTPUT_CHARS",
    "CachedExecutor",
    "ExecResult",
    "IsolationMode",
    "ProgramJob",
    "SandboxLimits",
    "TestCase",
    "TestKind",
    "TestOutcome",
    "Verdict",
    "behaviour_signature",
    "compare_stdout",
    "default_workers",
    "digest_tests",
    "probe_isolation",
    "run_many",
    "run_program",
    "same_behaviour",
]
