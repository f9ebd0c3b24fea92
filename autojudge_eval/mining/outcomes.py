"""Outcome equivalence per benchmark, as mining needs it: when is an answer's outcome decided, what is it,
and are two outcomes the same.

An :class:`OutcomeTask` sees generated token ids (prompt excluded). Outcomes are short strings so labels can
record them. Mining compares every alternative with the target's own answer, not with the gold one.

* :class:`GSM8KOutcome`: the final number (``benchmarks.references.extract_final_number``); decided once a line
  "The final answer is N" is complete.
* :class:`CodeOutcome`: the program's behaviour on the problem's tests through the sandbox (verdict per test,
  plus a hash of the output where it is wrong), or pass/fail only (the paper's criterion); decided once a
  python code block is closed. Programs are compared in a canonical form (``ast.unparse``), so alternatives
  that differ only in comments or layout share one sandbox run.
* :class:`CallableOutcome`: any function of the tokens (tests and experiments).
"""

from __future__ import annotations

import ast
import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from autojudge_eval.benchmarks.code_blocks import extract_code, python_block_closed
from autojudge_eval.benchmarks.gsm8k import STRICT_PATTERN, extract_final_number
from autojudge_eval.errors import SandboxError

NO_ANSWER = "[no answer]"
_NUMBER_CHARS = set("0123456789.,$")


class OutcomeTask(Protocol):
    name: str

    def decided(self, tokens: Sequence[int]) -> bool:
        """True once no further token can change the outcome (generation may stop)."""
        ...

    def outcome(self, tokens: Sequence[int]) -> str: ...

    def same(self, reference: str, other: str) -> bool: ...


@dataclass(frozen=True)
class CallableOutcome:
    """Outcome = ``str(fn(tokens))``; decided by ``decided_fn`` (default: only at EOS / the token budget)."""

    fn: Callable[[Sequence[int]], object]
    decided_fn: Callable[[Sequence[int]], bool] | None = None
    name: str = "custom"

    def decided(self, tokens: Sequence[int]) -> bool:
        return bool(self.decided_fn(tokens)) if self.decided_fn is not None else False

    def outcome(self, tokens: Sequence[int]) -> str:
        return str(self.fn(tokens))

    def same(self, reference: str, other: str) -> bool:
        return reference == other


@dataclass(frozen=True)
class GSM8KOutcome:
    """The extracted final number; two answers without a number count as the same outcome."""

    decode: Callable[[Sequence[int]], str]
    name: str = "gsm8k"

    def decided(self, tokens: Sequence[int]) -> bool:
        return final_answer_complete(self.decode(tokens))

    def outcome(self, tokens: Sequence[int]) -> str:
        return extract_final_number(self.decode(tokens)) or NO_ANSWER

    def same(self, reference: str, other: str) -> bool:
        return reference == other


def final_answer_complete(text: str) -> bool:
    """Whether ``text`` holds "The final answer is N" followed by a character that cannot extend N."""
    if "final answer is" not in text:
        return False
    for match in STRICT_PATTERN.finditer(text):
        end = match.end()
        if end < len(text) and text[end] not in _NUMBER_CHARS:
            return True
    return False


@dataclass
class CodeOutcome:
    """Behaviour of the answer's program on ``tests`` (sandboxed, cached by canonical program text).

    ``executor`` is a ``sandbox.CachedExecutor``; ``pass_fail_only`` compares whether all tests pass only.
    A sandbox failure raises :class:`SandboxError` (the label would be meaningless): the problem is retried.
    """

    decode: Callable[[Sequence[int]], str]
    tests: tuple
    executor: object
    pass_fail_only: bool = False
    name: str = "livecodebench"
    tests_key: str = ""
    _memo: dict[str, str] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if not self.tests:
            raise SandboxError("a code outcome needs at least one test")
        if not self.tests_key:
            from autojudge_eval.sandbox import digest_tests

            self.tests_key = digest_tests(self.tests)

    def decided(self, tokens: Sequence[int]) -> bool:
        return python_block_closed(self.decode(tokens))

    def outcome(self, tokens: Sequence[int]) -> str:

        program = canonical_program(extract_code(self.decode(tokens)))
        if program not in self._memo:
            self._memo[program] = self._run(program)
        return self._memo[program]

    def _run(self, program: str) -> str:
        from autojudge_eval.sandbox import Verdict, behaviour_signature

        result = self.executor.run(program, self.tests, tests_key=self.tests_key)
        if any(o.verdict is Verdict.SANDBOX_ERROR for o in result.outcomes):
            detail = next(o.detail for o in result.outcomes if o.verdict is Verdict.SANDBOX_ERROR)
            raise SandboxError(f"the sandbox failed while labelling a program: {detail}")
        passed = sum(o.verdict is Verdict.PASSED for o in result.outcomes)
        digest = hashlib.sha256(json.dumps(behaviour_signature(result)).encode()).hexdigest()[:16]
        return f"{'pass' if result.passed else 'fail'} {passed}/{len(result.outcomes)} {digest}"

    def same(self, reference: str, other: str) -> bool:
        if self.pass_fail_only:
            return reference.split(" ", 1)[0] == other.split(" ", 1)[0]
        return reference == other


def canonical_program(code: str) -> str:
    """``code`` without comments and with normalised layout (``ast.unparse``); unchanged if it does not parse."""
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError):
        return code
