"""Label mining: the AutoJudge paper's semi-greedy search for important draft/target mismatches.

Per problem: the target's greedy answer gives the reference outcome. Walk the answer left to right; at the
first position after the last decided one where the draft's greedy token differs from the text's token,
put the draft token there and let the target continue greedily. Same outcome (``answers.py``): the mismatch
is unimportant and the new text is kept; otherwise it is important and the old text stays. Repeat to the end.

Every mismatch records the judge's features exactly as the decoder builds them (``decoding._speculate``):
the draft's last hidden state after reading the draft token, and the target's after reading it (the first
step of the continuation computes it anyway). Rollouts, cache reuse and draft predictions: ``rollout.py``;
files and resume: ``records.py``; the command line: ``mining_cli.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .answers import OutcomeTask
from .errors import AutojudgeError, ConfigError
from .kv_cache import KVCache
from .mining_cli import add_mine_arguments, mine_main  # noqa: F401  the CLI entry points
from .records import MismatchLabel, PartWriter, ProblemRecord, done_problem_ids, part_name
from .rollout import TargetRunner, draft_view, sync_prefix
from .stack import LayerStack

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MineSettings:
    max_new_tokens: int = 400  # answer budget of the reference and of every continuation
    reuse_cache: bool = True  # False: recompute the prefix for every alternative (the paper's baseline)
    lookahead: int = 8  # old-text tokens the target verifies per forward in a continuation (0: off)
    rows: int = 1  # >1: that many problems in flight, their continuations batched (mining_batch.py)

    def runner_lookahead(self) -> int:
        return self.lookahead if self.reuse_cache else 0


@dataclass(frozen=True)
class Problem:
    id: str
    prompt_ids: tuple[int, ...]
    task: OutcomeTask


@dataclass
class MinedProblem:
    record: ProblemRecord
    labels: list[MismatchLabel]
    draft_hidden: torch.Tensor  # (m, Hd) float32
    target_hidden: torch.Tensor  # (m, H) float32
    answer: list[int]  # the final text of the search (answer tokens)
    reference: list[int]  # the target's own greedy answer


class Miner:
    """Mines one problem at a time with a target stack and its drafter (batch size 1)."""

    def __init__(
        self, stack: LayerStack, drafter, eos_ids: Sequence[int], settings: MineSettings, piece=None
    ):
        self.stack = stack
        self.view = draft_view(drafter)
        self.runner = TargetRunner(stack, self.view.capture_layer, settings.runner_lookahead())
        self.eos = frozenset(int(i) for i in eos_ids)
        self.settings = settings
        self.piece = piece or str  # token id -> readable text, for the records
        self._caches: tuple[KVCache, KVCache] | None = None
        self._cur = self._scratch = None  # the current text's cache, and the one alternatives are built in

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
        walk = _Walk(problem, prompt, ref.tokens[n_prompt:], self.view.start(ref, n_prompt))
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

    def _try(self, walk: _Walk, j: int, stop) -> None:
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


@dataclass
class _Walk:
    """The state of one problem's search: the current text, the draft's predictions for it, the results."""

    problem: Problem
    prompt: list[int]
    text: list[int]  # the current answer
    preds: list[int]  # the draft's greedy token at every answer position, given the current text before it
    reference: str = field(init=False)  # the outcome of the target's own answer (the first text)
    decided: int = 0  # positions before this one are decided
    valid: int = 0  # the scratch cache agrees with the current text on this many positions
    labels: list[MismatchLabel] = field(default_factory=list)
    draft_rows: list[torch.Tensor] = field(default_factory=list)
    target_rows: list[torch.Tensor] = field(default_factory=list)
    reference_text: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.reference_text = list(self.text)
        self.reference = self.problem.task.outcome(self.text)

    def next_mismatch(self) -> int | None:
        return next((i for i in range(self.decided, len(self.text)) if self.preds[i] != self.text[i]), None)

    def decide(self, j: int, roll, view, piece, tick: float) -> bool:
        """Label the mismatch at answer position ``j`` from its continuation ``roll``; keep the new text if
        the outcome is unchanged. Returns whether the mismatch is important."""
        at, task, n_prompt = len(self.prompt) + j, self.problem.task, len(self.prompt)
        outcome = task.outcome(roll.tokens[n_prompt:])
        important = not task.same(self.reference, outcome)
        draft_token, old = self.preds[j], self.text[j]
        self.draft_rows.append(view.mismatch(roll, at).float().cpu())
        self.target_rows.append(roll.target_hidden(at).float().cpu())
        if important:
            view.reject(at)
        else:
            self.preds = self.preds[: j + 1] + view.accept(roll, at)
            self.text = roll.tokens[n_prompt:]
        self.valid, self.decided = at, j + 1
        self.labels.append(
            MismatchLabel(
                problem_id=self.problem.id,
                index=len(self.labels),
                position=j,
                draft_token=int(draft_token),
                target_token=int(old),
                important=important,
                reference_outcome=self.reference,
                outcome=outcome,
                continuation_tokens=len(roll.tokens) - at - 1,
                seconds=round(time.perf_counter() - tick, 4),
                draft_piece=piece(int(draft_token)),
                target_piece=piece(int(old)),
            )
        )
        return important

    def result(self, view, stack, forwards: int, seconds: float) -> MinedProblem:
        labels = self.labels
        record = ProblemRecord(
            problem_id=self.problem.id,
            prompt_tokens=len(self.prompt),
            reference_tokens=len(self.reference_text),
            final_tokens=len(self.text),
            reference_outcome=self.reference,
            mismatches=len(labels),
            important=sum(label.important for label in labels),
            continuation_tokens=sum(label.continuation_tokens for label in labels),
            target_forwards=forwards,
            seconds=round(seconds, 3),
        )
        draft = _stack(self.draft_rows, view.hidden_size)
        target = _stack(self.target_rows, stack.hidden_size)
        return MinedProblem(record, labels, draft, target, self.text, self.reference_text)


def make_miner(stack: LayerStack, drafter, eos_ids, settings: MineSettings, piece=None):
    """A :class:`Miner`, or with ``settings.rows > 1`` a batched one (self-drafts only)."""
    if settings.rows > 1:
        from .mining_batch import BatchMiner

        return BatchMiner(stack, drafter, eos_ids, settings, piece)
    return Miner(stack, drafter, eos_ids, settings, piece)


def stopper(prompt_len: int, task: OutcomeTask, budget: int, eos: frozenset[int]):
    """``stop(seq)``: the answer in ``seq`` (after the prompt) ended, hit the budget or decided its outcome."""

    def stop(seq: list[int]) -> bool:
        n = len(seq) - prompt_len
        if n <= 0:
            return False
        return seq[-1] in eos or n >= budget or task.decided(seq[prompt_len:])

    return stop


def _stack(rows: list[torch.Tensor], size: int) -> torch.Tensor:
    return torch.stack(rows) if rows else torch.zeros(0, size)


def run_mining(
    miner: Miner,
    problems: Sequence[Problem],
    out: Path,
    header: dict,
    *,
    shard: tuple[int, int] = (0, 1),
    checkpoint_every: int = 4,
    progress: bool = True,
) -> dict:
    """Mine this shard's problems into ``out``/part-i-of-n, skipping problems any part has committed.

    Problem k belongs to shard ``k % n``. A checkpoint commits every ``checkpoint_every`` problems; a problem
    whose outcome cannot be computed (e.g. a sandbox failure) is logged and left for the next run.
    """
    index, count = shard
    folder = Path(out) / part_name(index, count)
    writer = PartWriter(folder, {**header, "part": f"{index}/{count}"})
    done = done_problem_ids(Path(out))
    mine = [p for k, p in enumerate(problems) if k % count == index and p.id not in done]
    totals = {"problems": 0, "mismatches": 0, "important": 0, "seconds": 0.0, "failed": []}
    quiet = {} if progress else {"disable": True}  # when shown, TQDM_DISABLE can still turn it off
    bar = tqdm(total=len(mine), desc=f"mine {header.get('task', '')}", unit="problem", **quiet)
    begin = committed = time.perf_counter()
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
        bar.set_postfix(
            labels=totals["mismatches"],
            important=f"{totals['important'] / max(totals['mismatches'], 1):.0%}",
            per_min=f"{60 * totals['mismatches'] / max(totals['seconds'], 1e-9):.0f}",
        )
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
) -> dict:
    """Mine ``problems`` several ways in this process (nothing is written) and compare with the no-cache
    baseline that recomputes every alternative's prefix (always run): rates, speedups and label agreement.

    Modes: ``batched`` (``settings.rows`` problems in flight; skipped when rows is 1), ``cached`` (batch 1,
    cache reuse + lookahead), ``cached_no_lookahead``, ``no_cache``.
    """
    unknown = sorted(set(modes) - set(COMPARE_MODES))
    if unknown:
        raise ConfigError(f"unknown comparison modes {unknown}; choose from {', '.join(COMPARE_MODES)}")
    every = {
        "batched": settings,
        "cached": replace(settings, rows=1),
        "cached_no_lookahead": replace(settings, lookahead=0, rows=1),
        "no_cache": replace(settings, reuse_cache=False, lookahead=0, rows=1),
    }
    chosen = [
        m for m in COMPARE_MODES if (m in modes or m == "no_cache") and (m != "batched" or settings.rows > 1)
    ]
    modes = {m if m != "batched" else f"batched_{settings.rows}_rows": every[m] for m in chosen}
    report, labels = {}, {}
    for name, mode in modes.items():
        miner = make_miner(stack, drafter, eos_ids, mode, piece)
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
            (x.problem_id, x.position, x.draft_token, x.important) for r in results for x in r.labels
        ]
        log.info("compare: %s took %.1f s for %d labels", name, seconds, count)
        report[name] = {
            "seconds": round(seconds, 2),
            "mismatches": count,
            "labels_per_minute": 60 * count / seconds if seconds else 0.0,
            "target_forwards": sum(r.record.target_forwards for r in results),
        }
    base = report["no_cache"]["seconds"]
    for name, entry in report.items():
        entry["speedup_vs_no_cache"] = base / entry["seconds"] if entry["seconds"] else 0.0
        entry["same_labels_as_no_cache"] = labels[name] == labels["no_cache"]
    return {"problems": [p.id for p in problems], "modes": report}
