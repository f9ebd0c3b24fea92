"""``autojudge-eval regress``: a small fixed slice, run as sweeps, checked against a committed baseline.

One file (``results/baseline/tolerances.toml``) states the slice (tasks, documents, methods, the judge) and
the tolerances; ``results/baseline/baseline.json`` holds the numbers it is compared with:

- accuracy: absolute difference, either way;
- agreement with target-only (the same real answer over the documents where the target gave one, never two
  blanks; ``sweeps.runs.Agreement``): absolute difference, either way;
- accepted draft tokens per cycle: relative difference, either way (a change means decoding changed);
- speed ratio to target-only, measured in the same run (never an absolute time): fails only when it drops by
  more than the relative tolerance; a larger gain passes with a note.

``--update`` rewrites ``baseline.json`` from a fresh run, deliberately.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from autojudge_eval.config import default_draft, parse_judge_spec, recorded_draft
from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.sweeps.runs import PointResult, agreement, read_run, speedup, target_of
from autojudge_eval.sweeps.sweep import SweepSpec, environment, method_points, run_sweep

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

SCHEMA = "autojudge-regress-baseline/1"


@dataclass(frozen=True)
class Tolerances:
    accuracy_abs: float
    agreement_abs: float
    accepted_per_cycle_rel: float
    speedup_rel: float


@dataclass(frozen=True)
class SliceTask:
    """One task of the slice: its first ``limit`` documents under ``methods``."""

    name: str
    limit: int
    methods: tuple[str, ...]
    apply_chat_template: bool = False
    gen_kwargs: str | None = None
    judge: str | None = None  # for the autojudge method; a path from the repository root
    threshold: float | None = None  # None: the judge card's own
    topk: int = 4


@dataclass(frozen=True)
class RegressConfig:
    tolerances: Tolerances
    tasks: tuple[SliceTask, ...]
    target: str = "default"
    draft: str | None = None
    window: int = 4
    threads: int | None = 1
    include_path: str = "tasks"
    interleave: bool = False  # every method timed back to back per document (sweep --interleave)

    def slice(self) -> dict:
        """What the baseline must have been measured on (threads and tolerances aside)."""
        data = dataclasses.asdict(self)
        del data["tolerances"], data["threads"]
        data["draft"] = self.draft or default_draft(self.target)  # the pair measured, named
        return json.loads(json.dumps(data))  # tuples as lists, as read back from JSON


def load_config(path: Path) -> RegressConfig:
    """Parse the TOML file; unknown or missing keys are a ConfigError naming the key."""
    try:
        raw = tomllib.loads(Path(path).read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read the regress config {path}: {exc}") from None
    try:
        tolerances = Tolerances(**raw.pop("tolerances"))
        tasks = tuple(SliceTask(**{**t, "methods": tuple(t["methods"])}) for t in raw.pop("task", []))
        config = RegressConfig(tolerances=tolerances, tasks=tasks, **raw.pop("run", {}))
    except (KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: bad or missing key ({exc}); see docs/reports.md for the format") from None
    if raw or not tasks:
        raise ConfigError(f"{path}: expected [tolerances], [run] and [[task]] tables; extra: {sorted(raw)}")
    return config


@dataclass(frozen=True)
class Skip:
    """A method of a task the run left out, and why."""

    task: str
    method: str
    reason: str

    def __str__(self) -> str:
        return f"{self.task}: {self.method} skipped, {self.reason}"


def judge_available(judge: str | None) -> bool:
    """A stand-in, a shipped judge's name (the backend resolves it for the pair and says clearly when the pair
    has none) or an existing path."""
    spec = parse_judge_spec(judge, must_exist=False)
    return spec is not None and (spec.kind != "path" or Path(spec.value).exists())


def run_slice(
    config: RegressConfig, out_dir: Path, *, threads: int | None = None, on_event=None
) -> tuple[dict, list[Skip]]:
    """Run every task of the slice as a sweep under ``out_dir``; return (measurements, what was skipped).

    A task's autojudge point is left out when its judge file is missing."""
    skipped, points = [], []
    for task in config.tasks:
        methods = list(task.methods)
        if "autojudge" in methods and not judge_available(task.judge):
            methods.remove("autojudge")
            skipped.append(Skip(task.name, "autojudge", f"judge not found at {task.judge}"))
        spec = SweepSpec(
            task=task.name, target=config.target, draft=config.draft,
            judge=task.judge if "autojudge" in methods else None, window=config.window, limit=task.limit,
            include_path=config.include_path, apply_chat_template=task.apply_chat_template,
            gen_kwargs=task.gen_kwargs, threads=threads or config.threads, interleave=config.interleave,
        )  # fmt: skip
        chosen = method_points(methods, topks=[task.topk], thresholds=[task.threshold])
        run_sweep(spec, chosen, Path(out_dir) / task.name, on_event=on_event)
        points += read_run(Path(out_dir) / task.name)
    return measurements(points), skipped


def measurements(points: list[PointResult]) -> dict:
    """``{task: {"metric": ..., "points": {name: {accuracy, agreement, accepted_per_cycle, speedup, ...}}}}``;
    ``agreement`` is the honest rate (same real answer / documents where the target gave one), and
    ``agreement_counts`` its whole breakdown, for reading (never compared)."""
    tasks: dict = {}
    for p in points:
        entry = tasks.setdefault(p.task, {"metric": p.metric, "pair": p.pair, "points": {}})
        found = agreement(p, target_of(p, points))
        entry["points"][p.name] = {
            "accuracy": p.accuracy,
            "accuracy_stderr": p.stderr,
            "agreement": found.rate if found else None,
            "agreement_counts": found.as_dict() if found else None,
            "accepted_per_cycle": p.accepted_per_cycle,
            "speedup": speedup(p, target_of(p, points)),
            "tokens_per_s": p.tokens_per_s,  # for information: never compared
            "new_tokens": p.speed.get("new_tokens"),
            "docs": p.n_docs,
            "command": p.command,
        }
    return tasks


def make_baseline(config: RegressConfig, tasks: dict, *, command: str, threads: int | None) -> dict:
    return {
        "schema": SCHEMA,
        "slice": config.slice(),
        "tasks": tasks,
        "environment": environment(command, threads),
    }


def write_baseline(path: Path, baseline: dict) -> None:
    from autojudge_eval.fileio import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(baseline, indent=1) + "\n")


def read_baseline(path: Path) -> dict:
    if not Path(path).is_file():
        raise DataError(
            f"no baseline at {path}; record one deliberately with `autojudge-eval regress --update`"
        )
    baseline = json.loads(Path(path).read_text())
    if baseline.get("schema") != SCHEMA:
        raise DataError(
            f"{path}: schema {baseline.get('schema')!r}, expected {SCHEMA!r}; rerun with --update"
        )
    return baseline


def slice_difference(config: RegressConfig, baseline: dict) -> str | None:
    """None when the baseline was measured on this config's slice, else what differs."""
    ours, theirs = config.slice(), dict(baseline.get("slice", {}))
    if "draft" in theirs:  # a baseline recorded before drafts were resolved says null: name what it ran
        theirs["draft"] = recorded_draft(theirs["draft"], theirs.get("target", "default"))
    diff = [f"{k}: baseline {theirs.get(k)!r}, config {v!r}" for k, v in ours.items() if theirs.get(k) != v]
    return "; ".join(diff) or None


@dataclass(frozen=True)
class Check:
    task: str
    point: str
    quantity: (
        str  # accuracy | same answer (agreement with target-only) | accepted/cycle | x target | (presence)
    )
    baseline: float | None
    current: float | None
    allowed: str
    status: str  # ok | FAIL | note | skipped

    @property
    def failed(self) -> bool:
        return self.status == "FAIL"


def compare(baseline: dict, current: dict, tol: Tolerances, skipped: list[Skip] = ()) -> list[Check]:
    """Every quantity of the baseline's tasks (``baseline["tasks"]``) against the current run's
    (:func:`measurements`); points only one side has become notes, or "skipped" when listed in ``skipped``."""
    checks = []
    for task, base in baseline.items():
        now_points = current.get(task, {}).get("points", {})
        for name, b in base["points"].items():
            c = now_points.get(name)
            if c is None:
                gone = any((s.task, s.method) == (task, name.split("-")[0]) for s in skipped)
                checks.append(Check(task, name, "(not run)", None, None, "", "skipped" if gone else "FAIL"))
                continue
            checks.append(
                _within(task, name, "accuracy", b["accuracy"], c["accuracy"], tol.accuracy_abs, False)
            )
            checks.append(_within(task, name, "accepted/cycle", b["accepted_per_cycle"],
                                  c["accepted_per_cycle"], tol.accepted_per_cycle_rel, True))  # fmt: skip
            if not name.startswith("target"):
                if "agreement" not in b:  # recorded before the gate checked agreement
                    checks.append(Check(task, name, "(no same answer)", None, c.get("agreement"),
                                        "baseline predates it: run --update", "FAIL"))  # fmt: skip
                    continue
                checks.append(_within(task, name, "same answer", b["agreement"], c.get("agreement"),
                                      tol.agreement_abs, False))  # fmt: skip
                checks.append(_speed(task, name, b["speedup"], c["speedup"], tol.speedup_rel))
        for name in sorted(set(now_points) - set(base["points"])):
            checks.append(Check(task, name, "(not in baseline)", None, None, "run --update to add", "note"))
    return checks


def _within(task, name, quantity, base, now, tol: float, relative: bool) -> Check:
    allowed = f"±{tol:.0%}" if relative else f"±{tol:g}"
    if base is None or now is None:
        return Check(task, name, quantity, base, now, allowed, "ok" if base == now else "FAIL")
    limit = tol * abs(base) if relative else tol
    return Check(
        task, name, quantity, base, now, allowed, "ok" if abs(now - base) <= limit + 1e-9 else "FAIL"
    )


def _speed(task, name, base, now, tol: float) -> Check:
    allowed = f"-{tol:.0%}"
    if base is None or now is None:
        return Check(task, name, "x target", base, now, allowed, "FAIL" if now is None and base else "note")
    if now < base * (1 - tol) - 1e-9:
        return Check(task, name, "x target", base, now, allowed, "FAIL")
    return Check(task, name, "x target", base, now, allowed, "note" if now > base * (1 + tol) else "ok")


def format_checks(checks: list[Check]) -> str:
    """A fixed-width table of every check, failures marked, and a one-line verdict."""
    head = (
        f"{'task':<22} {'point':<18} {'check':<18} {'baseline':>9} {'now':>9} {'change':>8} {'allowed':>8}"
        "  result"
    )
    lines = [head, "-" * len(head)]
    for c in checks:
        change = "" if c.baseline is None or c.current is None else f"{c.current - c.baseline:+.3f}"
        status = {"FAIL": "FAIL  <--", "note": "note (faster than allowed: update?)"}.get(c.status, c.status)
        if c.quantity.startswith("(") and c.status in ("note", "FAIL") and c.allowed:
            status = f"{status}: {c.allowed}" if c.failed else "note: " + c.allowed
        lines.append(
            f"{c.task:<22} {c.point:<18} {c.quantity:<18} {_num(c.baseline):>9} {_num(c.current):>9} "
            f"{change:>8} {c.allowed if c.quantity[0] != '(' else '':>8}  {status}"
        )
    failed = sum(c.failed for c in checks)
    verdict = (
        f"FAILED: {failed} of {len(checks)} checks out of tolerance"
        if failed
        else f"passed ({len(checks)} checks)"
    )
    return "\n".join(lines + ["", f"regress: {verdict}"])


def _num(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def format_values(tasks: dict) -> str:
    """The measured values per task and point (what ``--update`` records)."""
    head = (
        f"{'task':<22} {'point':<18} {'accuracy':>9} {'same answer (k/n)':>18} {'both blank':>10} "
        f"{'accepted/cycle':>15} {'x target':>9} {'tok/s':>7} {'docs':>5}"
    )
    lines = [head, "-" * len(head)]
    for task, entry in tasks.items():
        for name, v in entry["points"].items():
            counts = v.get("agreement_counts") or {}
            same = (
                f"{_num(v.get('agreement'))} ({counts.get('same', '-')}/{counts.get('target_answered', '-')})"
            )
            lines.append(
                f"{task:<22} {name:<18} {_num(v['accuracy']):>9} {same:>18} {counts.get('both_blank', '-'):>10} "
                f"{v['accepted_per_cycle']:>15.3f} {_num(v['speedup']):>9} {v['tokens_per_s']:>7.1f} {v['docs']:>5}"
            )
    lines.append(
        "same answer: the same real answer as target-only over the documents where the target gave one (k/n); "
        "both blank: documents where neither gave one (never counted as agreeing)"
    )
    return "\n".join(lines)
