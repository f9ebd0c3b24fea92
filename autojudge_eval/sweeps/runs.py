"""Reading sweep folders back: one :class:`PointResult` per finished method point, for reports and the gate.

Everything comes from the files a sweep leaves (``sweeps/sweep.py``): ``point.json`` (the point and its command),
lm-eval's results JSON (accuracy, lm-eval's standard error, ``config.autojudge`` with the speed totals) and
its samples file (each generation's speed record, for bootstrap intervals).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from autojudge_eval.errors import DataError

log = logging.getLogger(__name__)

# The accuracy column: the first of these a task reports (its first filter), else its first metric.
PRIMARY_METRICS = ("pass@1", "exact_match", "acc_norm", "acc")


@dataclass(frozen=True)
class DocSpeed:
    """One document's generation: new tokens and decoding seconds (summed over its requests)."""

    new_tokens: int
    wall_time_s: float


@dataclass(frozen=True)
class PointResult:
    """One finished method point of one sweep, for one task."""

    run_id: str
    name: str  # the point's folder name: target, lossless, topk-4, autojudge-t0.3
    mode: str
    topk: int | None
    threshold: float | None
    task: str
    pair: str
    window: int
    judge: str
    metric: str  # e.g. "exact_match,strict-match"
    accuracy: float | None
    stderr: float | None  # lm-eval's standard error of the metric (None when it reports N/A)
    speed: dict  # lm-eval results config.autojudge.speed[task]["generate_until"]
    command: str
    n_docs: int
    docs: dict[int, DocSpeed] = field(repr=False, default_factory=dict)
    answers: dict[int, str] = field(repr=False, default_factory=dict)  # doc -> the metric's filtered answer
    # lm-eval's samples file, and the --include_path its task came from: the report finds the code tasks'
    # docs (their tests) by the samples' doc_id and doc_hash
    samples: Path | None = field(repr=False, default=None)
    include_path: str | None = field(repr=False, default=None)
    engine: str = "hf"  # hf: --model autojudge; vllm: --model autojudge-vllm
    batch_size: str = "1"  # lm-eval's batch size as it recorded it ("auto" resolved to a number or "auto")

    @property
    def tokens_per_s(self) -> float:
        return float(self.speed.get("tokens_per_s", 0.0))

    @property
    def accepted_per_cycle(self) -> float:
        return float(self.speed.get("accepted_per_cycle", 0.0))

    @property
    def tokens_per_call(self) -> float:
        """New tokens per target call. Runs made before 2026-12-03 stored it as ``tokens_per_cycle``."""
        return float(self.speed.get("tokens_per_call", self.speed.get("tokens_per_cycle", 0.0)))


def find_runs(paths: list[Path]) -> list[Path]:
    """Sweep folders (those with a ``sweep.json``) among ``paths`` and below them, sorted, without repeats."""
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if (path / "sweep.json").is_file():
            found[path.resolve()] = None
        elif path.is_dir():
            found.update((p.parent.resolve(), None) for p in sorted(path.rglob("sweep.json")))
        else:
            raise DataError(f"{path}: not a folder; expected a sweep folder (with sweep.json) or a parent")
    if not found:
        raise DataError(f"no sweep folders (with sweep.json) under {', '.join(map(str, paths))}")
    return sorted(found)


def read_run(run_dir: Path) -> list[PointResult]:
    """The finished points of one sweep folder, in the sweep's order (unfinished ones left out).

    While a sweep grows its ``--limit``, its points are marked stale until the grown pass scores them again.
    The points read are then all of one scoring: the stale ones (the last complete scoring) as long as none
    is scored anew, else only the new ones, so that no table mixes two sets of documents."""
    run_dir = Path(run_dir)
    sweep = json.loads((run_dir / "sweep.json").read_text())
    marks = _stale_marks(run_dir, sweep)
    note = _growth_text(marks)
    if note:
        log.warning("%s is %s", run_dir, note)
    fresh = [n for n, mark in marks.items() if not mark] or list(marks)
    return [read_point(run_dir / n, sweep["run_id"]) for n in fresh]


def growth_note(run_dir: Path) -> str | None:
    """What :func:`read_run` reads of a sweep caught growing its ``--limit`` (None for a settled sweep)."""
    run_dir = Path(run_dir)
    return _growth_text(_stale_marks(run_dir, json.loads((run_dir / "sweep.json").read_text())))


def _stale_marks(run_dir: Path, sweep: dict) -> dict[str, dict | None]:
    """Each finished point's ``stale`` mark (None when current), in the sweep's order."""
    marks = {}
    for name in (p["name"] for p in sweep.get("points", [])):
        try:
            marks[name] = json.loads((run_dir / name / "point.json").read_text()).get("stale")
        except FileNotFoundError:
            continue
        except json.JSONDecodeError:
            log.warning(
                "%s: unreadable point.json, left out (resuming the sweep redoes that point)", run_dir / name
            )
    return marks


def _growth_text(marks: dict[str, dict | None]) -> str | None:
    grown = next((m for m in marks.values() if m), None)
    if grown is None:
        return None
    old, new = grown.get("limit"), grown.get("grown_to") or "all"
    if all(marks.values()):
        return f"growing its --limit from {old} to {new}: shown is its last complete scoring, at limit {old}"
    return f"being scored again after its --limit grew from {old} to {new}: shown are the points scored anew"


def read_point(folder: Path, run_id: str) -> PointResult:
    folder = Path(folder)
    point = json.loads((folder / "point.json").read_text())
    results_file, samples_file = folder / point["results"], folder / point["samples"]
    task = point["task"]
    try:
        results = json.loads(results_file.read_text())
        metric, accuracy, stderr = primary_metric(results["results"][task])
        docs, answers = read_samples(samples_file, metric.split(",", 1)[1])
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"{folder}: cannot read lm-eval's files ({exc}); rerun this point") from None
    info = results.get("config", {}).get("autojudge", {})
    p = point["point"]
    return PointResult(
        run_id=run_id, name=point["name"], mode=p["mode"], topk=p.get("topk"), threshold=p.get("threshold"),
        task=task, pair=str(info.get("pair", "?")), window=int(info.get("window", 0)),
        judge=str(info.get("judge", "none")), metric=metric, accuracy=accuracy, stderr=stderr,
        speed=info.get("speed", {}).get(task, {}).get("generate_until", {}), command=point["command"],
        n_docs=len(answers), docs=docs, answers=answers, samples=samples_file,
        include_path=_option(point.get("argv", []), "--include_path"),
        engine=str(info.get("engine", "hf")), batch_size=str(results.get("config", {}).get("batch_size", 1)),
    )  # fmt: skip


def _option(argv: list[str], name: str) -> str | None:
    """The value of ``name`` in a recorded command line (None when absent)."""
    return argv[argv.index(name) + 1] if name in argv[:-1] else None


def primary_metric(task_results: dict) -> tuple[str, float | None, float | None]:
    """(metric key, value, standard error) of the accuracy column from one task's lm-eval results."""
    keys = [k for k in task_results if "," in k and "_stderr," not in k]
    if not keys:
        raise DataError(f"no metrics in lm-eval's results: {sorted(task_results)}")
    chosen = next((k for name in PRIMARY_METRICS for k in keys if k.split(",")[0] == name), keys[0])
    name, filt = chosen.split(",", 1)
    return chosen, _number(task_results[chosen]), _number(task_results.get(f"{name}_stderr,{filt}"))


def read_samples(samples_file: Path, filter_name: str) -> tuple[dict[int, DocSpeed], dict[int, str]]:
    """From lm-eval's samples file (one line per document and filter), in one pass: each document's speed
    record(s), and its answer after the filter ``filter_name`` (GSM8K: the extracted number; code: the
    extracted program) as JSON text."""
    docs: dict[int, DocSpeed] = {}
    answers: dict[int, str] = {}
    for line in Path(samples_file).read_text().splitlines():
        sample = json.loads(line)
        doc = sample["doc_id"]
        if sample.get("filter", filter_name) == filter_name:
            answers.setdefault(doc, json.dumps(sample.get("filtered_resps"), sort_keys=True))
        if doc in docs:
            continue  # the same generation, listed again for another filter
        records = [
            args["arg_2"]["autojudge"]
            for args in sample.get("arguments", {}).values()
            if isinstance(args.get("arg_2"), dict) and "autojudge" in args["arg_2"]
        ]
        if any(r.get("scope") == "batch" for r in records):
            continue  # a batch's figures (vLLM), the same on each of its documents: no time of its own
        if records:
            docs[doc] = DocSpeed(
                sum(r["new_tokens"] for r in records), sum(r["wall_time_s"] for r in records)
            )
    return docs, answers


# What lm-eval's regex filters leave when they find no answer (GSM8K's "no final number"); a code task's
# filter leaves "" when the reply has no program.
NO_ANSWER = "[invalid]"
WILSON_Z = 1.959963984540054  # the 95% two-sided normal quantile


@dataclass(frozen=True)
class Agreement:
    """How a method point's answers compare with the target-only point's, document by document.

    Every document both points scored falls in exactly one of the first five counts. Two documents without an
    answer are never a match: the headline :attr:`rate` is the same real answer over the documents where the
    target gave one (``same / target_answered``); the both-blank share sits beside it, never folded in.
    ``unchecked`` (code behaviour only) counts documents where both sides had a program but the comparison could
    not be made (the sandbox failed, or the problem's tests were not found); they are in no other count.
    """

    same: int  # both gave an answer, and it is the same
    both_blank: int  # neither gave an answer
    target_only: int  # the target answered and the method did not
    method_only: int  # the method answered and the target did not
    different: int  # both answered, differently
    unchecked: int = 0

    @property
    def docs(self) -> int:
        """Documents both points scored (all six counts)."""
        return (
            self.same
            + self.both_blank
            + self.target_only
            + self.method_only
            + self.different
            + self.unchecked
        )

    @property
    def target_answered(self) -> int:
        """The headline's denominator: documents where the target gave an answer (and, for behaviour, it ran)."""
        return self.same + self.target_only + self.different

    @property
    def rate(self) -> float | None:
        """Same real answer / documents where the target gave one (None when the target never answered)."""
        return self.same / self.target_answered if self.target_answered else None

    @property
    def interval(self) -> tuple[float, float] | None:
        """The 95% Wilson score interval of :attr:`rate`."""
        return wilson_interval(self.same, self.target_answered)

    @property
    def both_blank_share(self) -> float | None:
        """Documents where neither side answered / documents both scored."""
        return self.both_blank / self.docs if self.docs else None

    @property
    def not_counted(self) -> int:
        """Documents outside the headline's denominator: the target gave no answer, or unchecked."""
        return self.both_blank + self.method_only + self.unchecked

    def as_dict(self) -> dict:
        """Every count, the headline rate with its interval, and the both-blank share (for JSON and CSV)."""
        low, high = self.interval or (None, None)
        return {
            "same": self.same, "both_blank": self.both_blank, "target_only": self.target_only,
            "method_only": self.method_only, "different": self.different, "unchecked": self.unchecked,
            "docs": self.docs, "target_answered": self.target_answered, "rate": self.rate,
            "rate_low": low, "rate_high": high, "both_blank_share": self.both_blank_share,
        }  # fmt: skip

    def headline(self) -> str:
        """``0.271 [0.223, 0.326] (76/280)``: the rate, its 95% Wilson interval and the count."""
        if self.rate is None:
            return f"n/a (0/{self.target_answered})"
        low, high = self.interval
        return f"{self.rate:.3f} [{low:.3f}, {high:.3f}] ({self.same}/{self.target_answered})"


def tally(cases: Iterable[tuple[bool, bool, bool | None]]) -> Agreement:
    """An :class:`Agreement` from (target answered, method answered, alike) per document; ``alike`` is read only
    when both answered, and None there means the comparison could not be made (``unchecked``)."""
    counts = dict.fromkeys(("same", "both_blank", "target_only", "method_only", "different", "unchecked"), 0)
    for theirs, mine, alike in cases:
        if theirs and mine:
            key = "unchecked" if alike is None else "same" if alike else "different"
        else:
            key = "target_only" if theirs else "method_only" if mine else "both_blank"
        counts[key] += 1
    return Agreement(**counts)


def wilson_interval(k: int, n: int, z: float = WILSON_Z) -> tuple[float, float] | None:
    """The Wilson score interval of the share k/n (None when n is 0); it stays inside [0, 1] at k = 0 or n."""
    if n <= 0:
        return None
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    low = 0.0 if k == 0 else max(0.0, centre - half)  # exact at the ends (the formula gives 1 - 1e-16)
    return low, 1.0 if k == n else min(1.0, centre + half)


def answer_text(answer_json: str) -> str:
    """The filtered answer as :func:`read_samples` keeps it (JSON of lm-eval's ``filtered_resps``), as text."""
    value = json.loads(answer_json)
    while isinstance(value, list):
        value = value[0] if value else ""
    return value if isinstance(value, str) else ""


def has_answer(text: str) -> bool:
    """Whether a filtered answer is one: not empty, and not lm-eval's ``[invalid]`` (no match of the filter)."""
    return bool(text.strip()) and text.strip() != NO_ANSWER


def agreement(point: PointResult, target: PointResult | None) -> Agreement | None:
    """``point``'s filtered answers against the target-only point's (same sweep), on the documents both scored.

    "The same" is exact match's own rule for GSM8K (lm-eval's normalisation: ``18.`` is ``18``), and equal
    text for the other tasks (the extracted program). None without a target point or a common document."""
    if target is None:
        return None
    common = [d for d in point.answers if d in target.answers]
    if not common:
        return None
    same = _numbers_match if point.metric.startswith("exact_match") else str.__eq__
    cases = []
    for d in common:
        mine, theirs = answer_text(point.answers[d]), answer_text(target.answers[d])
        both = has_answer(mine) and has_answer(theirs)
        cases.append((has_answer(theirs), has_answer(mine), bool(both and same(mine, theirs))))
    return tally(cases)


def _numbers_match(a: str, b: str) -> bool:
    from autojudge_eval.benchmarks.gsm8k import answers_match

    return answers_match(a, b)


def target_of(point: PointResult, points: list[PointResult]) -> PointResult | None:
    """The target-only point of the same sweep and task (the base of every speed ratio), if it ran."""
    return next(
        (p for p in points if p.mode == "target" and (p.run_id, p.task) == (point.run_id, point.task)), None
    )


def speedup(point: PointResult, target: PointResult | None) -> float | None:
    """tokens/s of ``point`` over tokens/s of the target-only point of the same sweep."""
    if target is None or target.tokens_per_s <= 0:
        return None
    return point.tokens_per_s / target.tokens_per_s


def _number(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None
