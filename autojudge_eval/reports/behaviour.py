"""The report's "same behaviour as target" for code tasks: does a method's program do on the problem's tests
what the target-only program does?

Text equality ("same answer as target") counts every harmless edit as a change: a renamed variable, another
loop, a comment. Mining labels a mismatch by behaviour on the tests (``mining.outcomes.CodeOutcome``), so the report
measures the cost of a speed gain the same way: per test, the same verdict, and the same output where the
answer was wrong (``sandbox.behaviour_signature``). Programs whose canonical text (``ast.unparse``) is equal
count as alike without running; the others run in the sandbox, through a cache keyed by program, tests and
limits (JSONL, never pickle). The tests come from the task's data (``harness.lm_eval_call.task_docs``, the data the
environment points at), each document checked against the ``doc_hash`` lm-eval logged for it: a sweep's
samples files keep no benchmark text (``sweeps.sweep.strip_benchmark_text``). A samples file that still holds the
``doc`` (a plain ``lm_eval --log_samples`` run) is read as it is.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path

from autojudge_eval.sweeps.runs import Agreement, PointResult, answer_text, has_answer, tally, target_of

logger = logging.getLogger(__name__)

BehaviourKey = tuple[str, str, str]  # (run_id, task, point name)


def default_cache() -> Path:
    """``$XDG_CACHE_HOME/autojudge-eval/report-sandbox.jsonl`` (``~/.cache`` when unset)."""
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return root / "autojudge-eval" / "report-sandbox.jsonl"


def code_family(task: str) -> str | None:
    """``benchmarks.livecodebench`` or ``benchmarks.humaneval`` for the code tasks (by name, as ``tasks/`` names them), else None."""
    return next((f for f in ("livecodebench", "humaneval") if f in task), None)


def behaviour_agreements(
    points: list[PointResult],
    *,
    cache: Path | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> dict[BehaviourKey, Agreement]:
    """For every point of a code task with a target-only point in its sweep, on the documents both scored: an
    :class:`~autojudge_eval.sweeps.runs.Agreement` of behaviour on the problem's tests.

    Only programs extracted on both sides are compared: a reply without a program on one side counts as
    ``target_only`` / ``method_only``, on both sides as ``both_blank``, never as alike. Programs with the same
    canonical text are alike without running; the others are run, and a pair the sandbox could not run (or
    whose problem is not in the task's data) is ``unchecked``, outside the headline's count."""
    from tqdm.auto import tqdm

    from autojudge_eval.sandbox import CachedExecutor, ProgramJob, Verdict, behaviour_signature

    pending: list[tuple[BehaviourKey, int, tuple[str, str], Callable[[str], ProgramJob]]] = []
    alike: dict[BehaviourKey, dict[int, bool | None]] = {}
    extracted: dict[BehaviourKey, dict[int, tuple[bool, bool]]] = {}  # (target has a program, method has one)
    docs: dict[Path, dict[int, Mapping]] = {}  # per target samples file, read once
    makers: dict[tuple[Path, int], Callable[[str], ProgramJob]] = {}  # per problem, its tests parsed once
    for point in points:
        family, target = code_family(point.task), target_of(point, points)
        if family is None or target is None or target.samples is None:
            continue
        key = (point.run_id, point.task, point.name)
        alike[key], extracted[key] = {}, {}
        for doc_id in sorted(set(point.answers) & set(target.answers)):
            mine, theirs = _program(point.answers[doc_id]), _program(target.answers[doc_id])
            extracted[key][doc_id] = (has_answer(theirs), has_answer(mine))
            if not all(extracted[key][doc_id]):
                alike[key][doc_id] = None  # read by tally() only when both sides have a program
                continue
            if point is target or _canonical(mine) == _canonical(theirs):
                alike[key][doc_id] = True
                continue
            if target.samples not in docs:
                docs[target.samples] = _docs(target)
            if doc_id not in docs[target.samples]:
                alike[key][doc_id] = None  # the doc is not in the task's data as it was scored: left out
                continue
            if (target.samples, doc_id) not in makers:
                makers[target.samples, doc_id] = _job_maker(family, docs[target.samples][doc_id])
            pending.append((key, doc_id, (theirs, mine), makers[target.samples, doc_id]))
    if pending:
        families = {code_family(key[1]) for key, *_ in pending}
        executors = {f: CachedExecutor(_limits(f), path=cache, workers=workers) for f in families}
        bar = tqdm(pending, desc="same behaviour as target (sandbox)", unit="pair", disable=not progress)
        for key, doc_id, (theirs, mine), make in bar:
            a, b = executors[code_family(key[1])].run_many([make(theirs), make(mine)])
            if any(o.verdict is Verdict.SANDBOX_ERROR for o in (*a.outcomes, *b.outcomes)):
                logger.warning(
                    "%s doc %d: the sandbox failed; the document is left out of agreement", key, doc_id
                )
                alike[key][doc_id] = None
            else:
                alike[key][doc_id] = behaviour_signature(a) == behaviour_signature(b)
    return {
        key: tally((*extracted[key][doc_id], same) for doc_id, same in per_doc.items())
        for key, per_doc in alike.items()
        if per_doc
    }


def _program(answer_json: str) -> str:
    """The filtered answer as ``sweeps.runs.read_samples`` keeps it (JSON of lm-eval's ``filtered_resps``)."""
    return answer_text(answer_json)


def _canonical(code: str) -> str:
    from autojudge_eval.mining.outcomes import canonical_program

    return canonical_program(code)


def _docs(target: PointResult) -> dict[int, Mapping]:
    """The documents the target point scored, by ``doc_id``: as logged in its samples file, else from the
    task's data where a document's ``doc_hash`` matches the logged one (the others are left out, with a
    warning: the data the environment points at is not what the run scored)."""
    from autojudge_eval.benchmarks.references import doc_hash
    from autojudge_eval.errors import AutojudgeError
    from autojudge_eval.harness.lm_eval_call import task_docs

    logged: dict[int, Mapping] = {}
    hashes: dict[int, str] = {}
    with Path(target.samples).open(encoding="utf-8") as fh:
        for line in fh:
            sample = json.loads(line)
            if isinstance(sample.get("doc"), dict):
                logged.setdefault(sample["doc_id"], sample["doc"])
            hashes.setdefault(sample["doc_id"], sample.get("doc_hash"))
    if not set(hashes) - set(logged):
        return logged
    where = f"{target.run_id}/{target.name} ({target.task})"
    try:
        data = task_docs(target.task, target.include_path or "tasks")
    except (AutojudgeError, OSError, ValueError) as exc:
        logger.warning("%s: cannot read the task's data for its tests (%s); no behaviour column", where, exc)
        return logged
    found = {
        i: data[i] for i in set(hashes) - set(logged) if i < len(data) and doc_hash(data[i]) == hashes[i]
    }
    lost = len(hashes) - len(logged) - len(found)
    if lost:
        logger.warning(
            "%s: %d of %d documents differ from the task's data here (doc_hash); they are left out of the "
            "behaviour column. Point AUTOJUDGE_DATA_DIR (or the hub) at the data the run used: see its command",
            where, lost, len(hashes),
        )  # fmt: skip
    return {**logged, **found}


def _limits(family: str):
    from autojudge_eval.benchmarks.humaneval import HUMANEVAL_LIMITS
    from autojudge_eval.sandbox import DEFAULT_LIMITS

    return HUMANEVAL_LIMITS if family == "humaneval" else DEFAULT_LIMITS


def _job_maker(family: str, doc: Mapping) -> Callable[[str], object]:
    """program -> the ``ProgramJob`` the task grades it with (all tests, hidden ones included)."""
    from autojudge_eval.sandbox import ProgramJob

    if family == "livecodebench":
        from autojudge_eval.benchmarks.livecodebench import parse_problem

        tests = parse_problem(dict(doc)).tests(include_private=True)
        return lambda code: ProgramJob(code, tests)
    from autojudge_eval.benchmarks.humaneval import HumanEvalProblem, build_program
    from autojudge_eval.sandbox import TestCase, TestKind

    problem = HumanEvalProblem(**{k: doc[k] for k in HumanEvalProblem.__dataclass_fields__})
    script = (TestCase("", kind=TestKind.SCRIPT),)
    return lambda completion: ProgramJob(build_program(problem, completion), script)
