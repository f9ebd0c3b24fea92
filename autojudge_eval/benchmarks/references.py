"""Agreement with a reference run (normally target-only) for the GSM8K tasks, and reading such runs.

GSM8K's own scoring (the final number, lm-eval's normalisation) is in ``benchmarks.gsm8k``; the tasks' hooks that
call both are in ``harness.task_hooks``.

The task YAMLs extract answers with lm-eval's own ``regex`` and ``take_first`` filters (the patterns of
``gsm8k_cot_llama``), then close each pipeline with a ``custom`` filter from this module that tags the
answer with the pipeline's name. ``process_gsm8k_results`` scores the tagged answer:

- ``exact_match``: the answer equals the gold number after lm-eval's GSM8K normalisation
  (case-insensitive; commas, ``$``, a trailing ``.`` and anything up to ``#### `` ignored).
- ``agreement``: over the docs where the reference run (normally the target model alone, run with
  ``--log_samples``) gave an answer, the share where this run's answer equals it under the same
  normalisation (the same filter, the same ``doc_id``). Two unparseable answers (``[invalid]``) never
  agree: a doc whose reference has no answer scores None and :func:`agreement_rate` leaves it out (the
  report's breakdown, ``sweeps.runs.Agreement``, counts such docs in its "both blank" column). Without a
  reference run the metric is omitted, never estimated; a doc the reference run did not score gets NaN,
  so a partial reference shows up as a NaN mean instead of a number over fewer docs.

The reference run is named by ``--metadata '{"reference_samples": PATH}'`` (recorded in the results
file) or by the environment variable ``AUTOJUDGE_REFERENCE_SAMPLES``. PATH is an lm-eval
``samples_<task>_<date>.jsonl`` file, or a folder searched for the newest such file of each task.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from autojudge_eval.benchmarks.gsm8k import answers_match
from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.fileio import json_object

if TYPE_CHECKING:
    import datasets

logger = logging.getLogger(__name__)

STRICT_MATCH = "strict-match"
FLEXIBLE_EXTRACT = "flexible-extract"
REFERENCE_SAMPLES_ENV = "AUTOJUDGE_REFERENCE_SAMPLES"
REFERENCE_COLUMN = "reference_answers"
INVALID = "[invalid]"  # what lm-eval's regex filter leaves when it finds no number


_SAMPLES_FILE = re.compile(
    r"^samples_(?P<task>.+)_(?P<date>\d{4}-\d{2}-\d{2}T\d{2}-\d{2}-\d{2}(?:\.\d+)?)\.jsonl$"
)


class FilteredAnswer(str):
    """An extracted answer that remembers the name of the lm-eval filter pipeline that produced it."""

    filter_name: str

    def __new__(cls, text: str, filter_name: str) -> FilteredAnswer:
        answer = super().__new__(cls, text)
        answer.filter_name = filter_name
        return answer

    def __reduce__(self) -> tuple[type[FilteredAnswer], tuple[str, str]]:
        return (FilteredAnswer, (str(self), self.filter_name))


@dataclass(frozen=True)
class ReferenceDoc:
    """One doc of a reference run: its question (or, in a sweep's samples, which keep no benchmark text, only
    lm-eval's ``doc_hash`` of it) and the answer each filter extracted."""

    doc_id: int
    question: str | None
    answers: Mapping[str, str]
    doc_hash: str | None = None


# --- lm-eval hooks (named by `!function` in tasks/gsm8k/*) ---------------------------------------


# --- scoring ----------------------------------------------------------------------------------------


def agreement(answer: str, references: Mapping[str, str | None] | None) -> float | None:
    """1.0 if ``answer`` is the reference run's answer from the same filter, 0.0 if the reference gave an answer
    and this is another one or none; None if the reference has no answer (left out of :func:`agreement_rate`,
    never a match); NaN if unknown."""
    if not isinstance(answer, FilteredAnswer):
        _warn_once("agreement needs answers tagged by a filter; end each filter pipeline with a tag_* step")
        return math.nan
    reference = references.get(answer.filter_name) if references is not None else None
    if reference is None:
        return math.nan
    if reference.strip() == INVALID:
        return None
    return float(answer.strip() != INVALID and answers_match(answer, reference))


def agreement_rate(items: Iterable[float | None]) -> float:
    """The ``agreement`` metric's aggregation: the mean over the docs where the reference gave an answer
    (None items left out); NaN when there is none, or when any doc is NaN (not scored by the reference)."""
    known = [v for v in items if v is not None]
    return math.fsum(known) / len(known) if known else math.nan


def tag(resps: Iterable[str], filter_name: str) -> list[FilteredAnswer]:
    tagged = []
    for resp in resps:
        if not isinstance(resp, str):
            raise ConfigError(f"{filter_name}: the tag filter expects one string per doc (after take_first)")
        tagged.append(FilteredAnswer(resp, filter_name))
    return tagged


@functools.cache
def _warn_once(message: str) -> None:
    logger.warning(message)


# --- reference runs -----------------------------------------------------------------------------------


def with_reference_answers(
    docs: datasets.Dataset, task_name: str | None, reference_samples: str | None = None
) -> datasets.Dataset:
    """``docs`` plus a ``reference_answers`` column when a reference run is configured, else unchanged."""
    path = reference_samples_path(reference_samples)
    if path is None:
        logger.info(  # not a fault: a sweep's report computes agreement against its own target point
            "%s: no agreement metric: no reference run given (--metadata reference_samples or %s); "
            "autojudge-eval report computes it against a sweep's target-only point",
            task_name or "GSM8K",
            REFERENCE_SAMPLES_ENV,
        )
        return docs
    file = find_reference_file(path, task_name)
    references = load_reference_samples(file)
    check_reference_docs(docs, references, file)
    column = [references[i].answers if i in references else None for i in range(len(docs))]
    logger.info("agreement against %s (%d of %d docs)", file, len(references), len(docs))
    return docs.add_column(REFERENCE_COLUMN, column)


def reference_samples_path(override: str | None = None) -> Path | None:
    """The reference run named by ``override`` (task metadata) or ``AUTOJUDGE_REFERENCE_SAMPLES``."""
    value = (override or os.environ.get(REFERENCE_SAMPLES_ENV, "")).strip()
    return Path(value).expanduser() if value else None


def find_reference_file(path: Path, task_name: str | None) -> Path:
    """``path`` itself when it is a file; for a folder, its newest ``samples_<task_name>_*.jsonl``."""
    if path.is_file():
        named_task = _samples_file_task(path)
        if task_name and named_task and named_task != task_name:
            logger.warning("reference samples %s come from task %s, not %s", path, named_task, task_name)
        return path
    if not path.is_dir():
        raise DataError(
            f"reference samples {path} do not exist (set by --metadata or {REFERENCE_SAMPLES_ENV})"
        )
    if not task_name:
        raise ConfigError(
            f"reference folder {path} needs the task name to pick a file; name the file instead"
        )
    found = sorted(
        (match["date"], file)
        for file in path.rglob("samples_*.jsonl")
        if (match := _SAMPLES_FILE.match(file.name)) and match["task"] == task_name
    )
    if not found:
        raise DataError(
            f"no samples_{task_name}_<date>.jsonl under {path}; run the reference with --log_samples"
        )
    if len(found) > 1:
        logger.warning("%d reference runs of %s under %s; using the newest", len(found), task_name, path)
    return found[-1][1]


def _samples_file_task(file: Path) -> str | None:
    match = _SAMPLES_FILE.match(file.name)
    return match["task"] if match else None


def load_reference_samples(file: Path) -> dict[int, ReferenceDoc]:
    """Read an lm-eval samples file into ``{doc_id: ReferenceDoc}``; DataError names a bad line."""
    identities: dict[int, tuple[str | None, str | None]] = {}  # doc_id -> (question, doc_hash)
    answers: dict[int, dict[str, str]] = {}
    with file.open(encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            doc_id, identity, filter_name, answer = _parse_sample(line, file, line_no)
            if identities.setdefault(doc_id, identity) != identity:
                raise DataError(f"{file}, line {line_no}: doc_id {doc_id} appears with two questions")
            if filter_name in answers.setdefault(doc_id, {}):
                raise DataError(
                    f"{file}, line {line_no}: doc_id {doc_id} filter {filter_name!r} appears twice"
                )
            answers[doc_id][filter_name] = answer
    if not identities:
        raise DataError(f"{file}: no samples (expected lm-eval --log_samples output)")
    return {i: ReferenceDoc(i, question, answers[i], digest) for i, (question, digest) in identities.items()}


def _parse_sample(line: str, file: Path, line_no: int) -> tuple[int, tuple[str | None, str | None], str, str]:
    where = f"{file}, line {line_no}"
    sample = json_object(line, where)
    doc_id, doc, filter_name = sample.get("doc_id"), sample.get("doc"), sample.get("filter")
    filtered = sample.get("filtered_resps")
    if not isinstance(doc_id, int) or not isinstance(filter_name, str):
        raise DataError(f"{where}: expected an integer 'doc_id' and a string 'filter'")
    if isinstance(doc, dict) and isinstance(doc.get("question"), str):
        identity = (doc["question"], None)
    elif doc is None and isinstance(sample.get("doc_hash"), str):
        identity = (None, sample["doc_hash"])  # a sweep's samples: the doc is dropped, its hash kept
    else:
        raise DataError(
            f"{where}: expected 'doc' with a string 'question' (a GSM8K task's samples), or lm-eval's "
            "'doc_hash' without the doc (an autojudge-eval sweep's samples)"
        )
    if not isinstance(filtered, list) or not filtered or not isinstance(filtered[0], str):
        raise DataError(f"{where}: expected 'filtered_resps' to be a list starting with a string")
    return doc_id, identity, filter_name, filtered[0]


def check_reference_docs(docs: datasets.Dataset, references: Mapping[int, ReferenceDoc], file: Path) -> None:
    """Raise DataError unless every reference doc_id names this task's doc: the same question, or where the
    reference kept only lm-eval's ``doc_hash``, the same hash of the whole doc."""

    questions = docs["question"]
    for doc_id, reference in references.items():
        if not 0 <= doc_id < len(questions):
            same = False
        elif reference.question is not None:
            same = questions[doc_id] == reference.question
        else:
            same = doc_hash(dict(docs[doc_id])) == reference.doc_hash
        if not same:
            raise DataError(
                f"{file}: doc_id {doc_id} is not the same question in this task's data; the reference run "
                "used another split, source or order (compare AUTOJUDGE_DATA_DIR of both runs)"
            )


def doc_hash(doc: dict) -> str:
    """lm-eval's ``doc_hash`` of a document, as its samples files record it."""
    from lm_eval.utils import handle_non_serializable, hash_string

    return hash_string(json.dumps(doc, indent=2, default=handle_non_serializable, ensure_ascii=False))
