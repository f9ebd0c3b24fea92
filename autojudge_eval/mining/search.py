"""Label mining: the AutoJudge paper's semi-greedy search for important draft/target mismatches.

Per problem: the target's greedy answer gives the reference outcome. Walk the answer left to right; at the
first position after the last decided one where the draft's greedy token differs from the text's token,
put the draft token there and let the target continue greedily. Same outcome (``mining/outcomes.py``): the mismatch
is unimportant and the new text is kept; otherwise it is important and the old text stays. Repeat to the end.

Every mismatch records the judge's features exactly as the decoder builds them (``engine.decoding._speculate``):
the draft's last hidden state after reading the draft token, and the target's after reading it (the first
step of the continuation computes it anyway). Rollouts, cache reuse and draft predictions: ``mining/rollout.py``;
files and resume: ``mining/records.py``; the command line: ``cli/mine.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tqdm.auto import tqdm

from autojudge_eval.engine.kv_cache import KVCache
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import AutojudgeError, ConfigError
from autojudge_eval.mining.records import (
    PartWriter,
    ProblemRecord,
    done_problem_ids,
    part_name,
)
from autojudge_eval.mining.rollout import TargetRunner, draft_view, sync_prefix
from autojudge_eval.mining.walk import MinedProblem, MineSettings, Problem, Walk, stopper

log = logging.getLogger(__name__)


class Miner:
    """Mines one problem at a time with a target stack and its drafter (batch size 1)."""

    def __init__(
        self, stack: LayerStack, drafter, eos_ids: Sequence[int], settings: MineSettings, piece=None
    ):
        self.stack = stack
        self.view = draft_view(drafter)
        self.runner = TargetRunner(
            stack,
            self.view.capture_layer,
            settings.runner_lookahead(),
            capture_features=self.view.reads_features,
        )
        self.eos = frozenset(int(i) for i in eos_ids)
        self.settings = settings
        self.piece = piece or str  # token id -> readable text, for the records
        self._caches: tuple[KVCache, KVCache] | None = None
        self._cur = self._scratch = None  # the current text's cache, and the one alternatives are built in
        self.on_label = None  # called with each MismatchLabel as it is decided (progress); set by the caller

    def _alloc(self, max_len: int) -> tuple[KVCache, KVCache]:
        if self._caches is None or self._caches[0].max_len < max_len:
            self._caches = (self.stack.new_cache(max_len), self.stack.new_cache(max_len))
        for cache in self._caches:
            cache.crop(0)
        self.view.reset(max_len)
        return self._caches

    def mine(self, problem: Problem) -> MinedProblem:
        """Run the semi-greedy search on one problem; labels and features in mismatch order."""
        start = time.perf_counter()
        prompt, task, forwards = list(problem.prompt_ids), problem.task, self.runner.forwards
        n_prompt = len(prompt)
        self._cur, self._scratch = self._alloc(
            n_prompt + self.settings.max_new_tokens + self.settings.lookahead + 2
        )
        stop = stopper(n_prompt, task, self.settings.max_new_tokens, self.eos)
        ref = self.runner.rollout(prompt, self._cur, stop)
        walk = Walk(problem, prompt, ref.tokens[n_prompt:], self.view.start(ref, n_prompt))
        while (j := walk.next_mismatch()) is not None:
            self._try(walk, j, stop)
        return walk.result(
            self.view, self.stack, self.runner.forwards - forwards, time.perf_counter() - start
        )

    def mine_many(self, problems: Sequence[Problem]):
        """Yield (problem, MinedProblem or the AutojudgeError that stopped it), one problem at a time."""
        for problem in problems:
            try:
                yield problem, self.mine(problem)
            except AutojudgeError as exc:
                yield problem, exc

    def _try(self, walk: Walk, j: int, stop) -> None:
        """Label the mismatch at answer position ``j`` and keep the text its outcome calls for."""
        tick, at = time.perf_counter(), len(walk.prompt) + j
        if self.settings.reuse_cache:
            sync_prefix(self._cur, self._scratch, walk.valid, at)
        else:
            self._scratch.crop(0)
        roll = self.runner.rollout(
            walk.prompt + walk.text[:j] + [walk.preds[j]], self._scratch, stop, walk.text[j + 1 :]
        )
        if not walk.decide(j, roll, self.view, self.piece, tick):
            self._cur, self._scratch = self._scratch, self._cur
        if self.on_label is not None:
            self.on_label(walk.labels[-1])


def make_miner(stack: LayerStack, drafter, eos_ids, settings: MineSettings, piece=None):
    """A :class:`Miner`, or with ``settings.rows > 1`` a batched one (self-drafts and lookup drafters)."""
    if settings.rows > 1:
        from autojudge_eval.mining.batch import BatchMiner

        return BatchMiner(stack, drafter, eos_ids, settings, piece)
    return Miner(stack, drafter, eos_ids, settings, piece)


def run_mining(
    miner: Miner,
    problems: Sequence[Problem],
    out: Path,
    header: dict,
    *,
    shard: tuple[int, int] = (0, 1),
    checkpoint_every: int = 1,
    progress: bool = True,
) -> dict:
    """Mine this shard's problems into ``out``/part-i-of-n, skipping problems any part has committed.

    Problem k belongs to shard ``k % n``. A checkpoint commits every ``checkpoint_every`` finished problems
    (default 1: a commit takes milliseconds and a problem minutes, so a kill loses only the problems still in
    flight). A problem whose outcome cannot be computed (e.g. a sandbox failure) is logged and left for the
    next run. The bar counts problems and, as each mismatch is decided, labels, target tokens and rates.
    """
    if checkpoint_every < 1:
        raise ConfigError(f"--checkpoint-every must be at least 1, not {checkpoint_every}")
    index, count = shard
    folder = Path(out) / part_name(index, count)
    writer = PartWriter(folder, {**header, "part": f"{index}/{count}"})
    done = done_problem_ids(Path(out))
    mine = [p for k, p in enumerate(problems) if k % count == index and p.id not in done]
    totals = {"problems": 0, "mismatches": 0, "important": 0, "seconds": 0.0, "failed": []}
    quiet = {} if progress else {"disable": True}  # when shown, TQDM_DISABLE can still turn it off
    bar = tqdm(total=len(mine), desc=f"mine {header.get('task', '')}", unit="problem", **quiet)
    begin = committed = time.perf_counter()
    live = {"labels": 0, "important": 0, "tokens": 0}  # every decided mismatch, finished problems or not

    def on_label(label) -> None:
        live["labels"] += 1
        live["important"] += int(label.important)
        live["tokens"] += label.continuation_tokens
        seconds = max(time.perf_counter() - begin, 1e-9)
        bar.set_postfix(
            labels=live["labels"],
            important=f"{live['important'] / live['labels']:.0%}",
            per_min=f"{60 * live['labels'] / seconds:.1f}",
            tok_s=f"{live['tokens'] / seconds:.1f}",
        )

    miner.on_label = on_label
    try:
        for problem, result in miner.mine_many(mine):
            bar.update()
            if isinstance(result, Exception):
                log.warning("problem %s skipped (will be retried on resume): %s", problem.id, result)
                totals["failed"].append(problem.id)
                continue
            writer.add(result.record, result.labels, result.draft_hidden, result.target_hidden)
            if writer.pending >= checkpoint_every:
                now = time.perf_counter()
                writer.checkpoint(wall_seconds=now - committed)  # in-flight work lands in the next checkpoint
                committed = now
            _count(totals, result.record)
            totals["seconds"] = time.perf_counter() - begin
    finally:
        miner.on_label = None
    totals["seconds"] = time.perf_counter() - begin
    writer.checkpoint(wall_seconds=time.perf_counter() - committed)
    bar.close()
    return summarize(totals, writer.manifest, folder, skipped=len(done))


def _count(totals: dict, record: ProblemRecord) -> None:
    totals["problems"] += 1
    totals["mismatches"] += record.mismatches
    totals["important"] += record.important


def summarize(totals: dict, manifest: dict, folder: Path, *, skipped: int = 0) -> dict:
    """This run's figures plus the part's committed totals."""
    seconds, labels = totals["seconds"], totals["mismatches"]
    return {
        "folder": str(folder),
        "problems": totals["problems"],
        "skipped_done": skipped,
        "failed": totals["failed"],
        "mismatches": labels,
        "important": totals["important"],
        "important_share": totals["important"] / labels if labels else 0.0,
        "seconds": round(seconds, 2),
        "seconds_per_problem": seconds / totals["problems"] if totals["problems"] else 0.0,
        "labels_per_minute": 60 * labels / seconds if seconds else 0.0,
        "part_totals": manifest["counts"],
    }


COMPARE_MODES = ("batched", "cached", "cached_no_lookahead", "no_cache")


def compare_no_cache(
    stack: LayerStack,
    drafter,
    eos_ids,
    problems: Sequence[Problem],
    settings: MineSettings,
    piece=None,
    modes: Sequence[str] = COMPARE_MODES,
    *,
    engines: dict | None = None,
    baseline: str = "no_cache",
) -> dict:
    """Mine ``problems`` several ways in this process (nothing is written) and compare each with the
    ``baseline`` mode (always run; by default no cache: every alternative's prefix recomputed): rates,
    speedups and label agreement.

    Modes: ``batched`` (``settings.rows`` problems in flight; skipped when rows is 1), ``cached`` (batch 1,
    cache reuse + lookahead), ``cached_no_lookahead``, ``no_cache``, and any name in ``engines``, a miner
    factory for a miner that runs elsewhere (``vllm``: ``vllm.mining``). Labels are compared as (problem,
    position, draft token, target token, important, outcome).
    """
    engines = dict(engines or {})
    known = (*COMPARE_MODES, *engines)
    unknown = sorted(set((*modes, baseline)) - set(known))
    if unknown:
        raise ConfigError(f"unknown comparison modes {unknown}; choose from {', '.join(known)}")
    every = {
        "batched": settings,
        "cached": replace(settings, rows=1),
        "cached_no_lookahead": replace(settings, lookahead=0, rows=1),
        "no_cache": replace(settings, reuse_cache=False, lookahead=0, rows=1),
    }
    factories = {
        m: (lambda mode=mode: make_miner(stack, drafter, eos_ids, mode, piece)) for m, mode in every.items()
    }
    factories.update(engines)
    if baseline == "batched" and settings.rows < 2:
        raise ConfigError("the batched baseline needs --rows of at least 2")
    chosen = [m for m in known if (m in modes or m == baseline) and (m != "batched" or settings.rows > 1)]
    named = {m if m != "batched" else f"batched_{settings.rows}_rows": m for m in chosen}
    base_name = next(name for name, m in named.items() if m == baseline)
    report, labels = {}, {}
    for name, mode in named.items():
        miner = factories[mode]()
        begin, results = time.perf_counter(), []
        for _, result in miner.mine_many(problems):
            if isinstance(result, Exception):
                raise result
            results.append(result)
        seconds = time.perf_counter() - begin
        order = {p.id: k for k, p in enumerate(problems)}
        results.sort(key=lambda r: order[r.record.problem_id])
        count = sum(r.record.mismatches for r in results)
        labels[name] = [
            (x.problem_id, x.position, x.draft_token, x.target_token, x.important, x.outcome)
            for r in results
            for x in r.labels
        ]
        log.info("compare: %s took %.1f s for %d labels", name, seconds, count)
        report[name] = {
            "seconds": round(seconds, 2),
            "mismatches": count,
            "labels_per_minute": 60 * count / seconds if seconds else 0.0,
            "target_forwards": sum(r.record.target_forwards for r in results),
        }
    base = report[base_name]["seconds"]
    for name, entry in report.items():
        entry["speedup_vs_baseline"] = base / entry["seconds"] if entry["seconds"] else 0.0
        entry["same_labels_as_baseline"] = labels[name] == labels[base_name]
        if not entry["same_labels_as_baseline"]:
            entry["first_difference"] = _first_difference(labels[name], labels[base_name])
    return {"problems": [p.id for p in problems], "baseline": base_name, "modes": report}


def _first_difference(got: list[tuple], want: list[tuple]) -> dict:
    """Where two label lists part: the index and both labels there (None past an end)."""
    k = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), min(len(got), len(want)))
    return {"index": k, "got": got[k] if k < len(got) else None, "baseline": want[k] if k < len(want) else None,
            "labels": len(got), "baseline_labels": len(want)}  # fmt: skip
