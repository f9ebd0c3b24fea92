"""Behaviour comparison and a result cache, for mining: does a program behave like another on a problem's
tests, asked thousands of times. Import these names from ``autojudge_eval.sandbox``."""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from autojudge_eval.sandbox.common import Verdict
from autojudge_eval.sandbox.runner import run_many
from autojudge_eval.sandbox.values import (
    DEFAULT_LIMITS,
    ExecResult,
    IsolationMode,
    ProgramJob,
    SandboxLimits,
    TestCase,
)

__all__ = ["CachedExecutor", "behaviour_signature", "digest_tests", "same_behaviour"]
logger = logging.getLogger(__name__)


def behaviour_signature(result: ExecResult) -> tuple[tuple[str, str], ...]:
    """Per test: the verdict, plus the output hash when the answer was wrong (passing outputs are equivalent
    by definition; crashes and timeouts are compared by verdict only)."""
    return tuple(
        (o.verdict.value, o.output_sha256 if o.verdict is Verdict.WRONG_ANSWER else "")
        for o in result.outcomes
    )


def same_behaviour(a: ExecResult, b: ExecResult, *, pass_fail_only: bool = False) -> bool:
    """Whether two programs behaved alike on the same tests (SANDBOX_ERROR never counts as alike)."""
    if any(o.verdict is Verdict.SANDBOX_ERROR for o in (*a.outcomes, *b.outcomes)):
        return False
    if pass_fail_only:
        return a.passed == b.passed
    return behaviour_signature(a) == behaviour_signature(b)


def digest_tests(tests: Sequence[TestCase]) -> str:
    """A stable sha256 of a test list, so callers can key caches by problem once."""
    digest = hashlib.sha256()
    for t in tests:
        digest.update(json.dumps([t.kind.value, t.func_name, t.input, t.expected]).encode())
    return digest.hexdigest()


class CachedExecutor:
    """``run_program`` behind an in-memory LRU keyed by sha256(program, tests, limits), optionally mirrored
    to an append-only JSONL file that is read back on start. SANDBOX_ERROR results are never cached."""

    def __init__(
        self,
        limits: SandboxLimits = DEFAULT_LIMITS,
        *,
        max_entries: int = 50_000,
        path: str | Path | None = None,
        workers: int | None = None,
        isolation: IsolationMode | None = None,
    ) -> None:
        self.limits, self.max_entries, self.workers, self.isolation = limits, max_entries, workers, isolation
        self.path = Path(path) if path is not None else None
        self.hits = self.misses = 0
        self._entries: OrderedDict[str, ExecResult] = OrderedDict()
        self._lock = threading.Lock()
        self._limits_key = json.dumps(asdict(limits), sort_keys=True)
        if self.path is not None and self.path.is_file():
            self._load(self.path)

    def key(self, code: str, tests_key: str) -> str:
        return hashlib.sha256("\0".join((code, tests_key, self._limits_key)).encode()).hexdigest()

    def run(self, code: str, tests: Sequence[TestCase], *, tests_key: str | None = None) -> ExecResult:
        return self.run_many(
            [ProgramJob(code, tuple(tests))], tests_keys=None if tests_key is None else [tests_key]
        )[0]

    def run_many(
        self, jobs: Sequence[ProgramJob], *, tests_keys: Sequence[str] | None = None
    ) -> list[ExecResult]:
        """Cached results where present; the rest run once per distinct key through ``run_many``."""
        keys = [
            self.key(j.code, tk)
            for j, tk in zip(jobs, tests_keys or [digest_tests(j.tests) for j in jobs], strict=True)
        ]
        found = {k: r for k in set(keys) if (r := self._get(k)) is not None}
        todo = {k: j for k, j in zip(keys, jobs, strict=True) if k not in found}
        with self._lock:
            self.hits += len(keys) - sum(1 for k in keys if k in todo)
            self.misses += sum(1 for k in keys if k in todo)
        fresh = run_many(todo.values(), self.limits, self.workers, isolation=self.isolation)
        for k, result in zip(todo, fresh, strict=True):
            self._put(k, result)
        found.update(zip(todo, fresh, strict=True))
        return [found[k] for k in keys]

    def _get(self, key: str) -> ExecResult | None:
        with self._lock:
            result = self._entries.get(key)
            if result is not None:
                self._entries.move_to_end(key)
            return result

    def _put(self, key: str, result: ExecResult, *, persist: bool = True) -> None:
        if any(o.verdict is Verdict.SANDBOX_ERROR for o in result.outcomes):
            return
        with self._lock:
            self._entries[key] = result
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            if persist and self.path is not None:
                with self.path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"key": key, "result": result.to_dict()}) + "\n")

    def _load(self, path: Path) -> None:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, start=1):
                try:
                    record = json.loads(line)
                    self._put(record["key"], ExecResult.from_dict(record["result"]), persist=False)
                except (ValueError, KeyError, TypeError) as exc:  # e.g. a line cut short by a crash
                    logger.warning("%s:%d: skipping unreadable cache line (%s)", path, number, exc)
