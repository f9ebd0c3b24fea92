"""Reading sweep folders back: one :class:`PointResult` per finished method point, for reports and the gate.

Everything comes from the files a sweep leaves (``sweeps/sweep.py``): ``point.json`` (the point and its command),
lm-eval's results JSON (accuracy, lm-eval's standard error, ``config.autojudge`` with the speed totals) and
its samples file (each generation's speed record, for bootstrap intervals).
"""

from __future__ import annotations

import json
import logging
import math
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
        n_docs=len(docs), docs=docs, answers=answers, samples=samples_file,
        include_path=_option(point.get("argv", []), "--include_path"),
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
        if records:
            docs[doc] = DocSpeed(
                sum(r["new_tokens"] for r in records), sum(r["wall_time_s"] for r in records)
            )
    return docs, answers


def agreement(point: PointResult, target: PointResult | None) -> float | None:
    """Share of the documents both scored where ``point``'s filtered answer equals the target-only point's
    (the same sweep): how often the method changes what the target alone would answer."""
    if target is None:
        return None
    common = [d for d in point.answers if d in target.answers]
    if not common:
        return None
    return sum(point.answers[d] == target.answers[d] for d in common) / len(common)


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
