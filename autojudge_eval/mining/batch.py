"""Batched label mining: several problems in flight, their greedy continuations run as one batch.

The semi-greedy search of one problem is sequential (each decision changes the text the next alternative
branches from), but different problems are independent. :class:`BatchMiner` keeps ``rows`` problems in flight,
one continuation each, in a :class:`~autojudge_eval.engine.kv_cache.RowCache`: every step feeds one token per row at
that row's own position, so a step costs about one batched forward instead of ``rows`` single-token ones.
When a row's continuation is decided, its problem's next alternative starts in the same row (the row already
holds the shared prefix: only positions that changed are copied); when a problem is done, the next problem
takes the row.

Each problem's current text lives in its own batch-1 :class:`~autojudge_eval.engine.kv_cache.KVCache`; an alternative
kept by the search is saved there from its row. Labels, features and records are those of
:class:`~autojudge_eval.mining.search.Miner` (the same ``Walk``); only the execution differs (no old-text lookahead:
the batch is the parallelism). Drafts that need no pass of their own: a self-draft's predictions come from
the layer-L residuals captured in the same step, a lookup drafter's from the text alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch

from autojudge_eval.engine.kv_cache import KVCache, RowCache
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import AutojudgeError, ConfigError
from autojudge_eval.mining.rollout import LookupDraftView, Rollout, SelfDraftView, draft_view
from autojudge_eval.mining.walk import MinedProblem, MineSettings, Problem, Walk, stopper


@dataclass
class _Job:
    """One continuation in a row: ``seq`` grows greedily from the token at absolute position ``at``."""

    seq: list[int]
    at: int
    j: int | None  # the answer position of the mismatch; None for the reference answer
    tick: float
    first: torch.Tensor | None = None  # (H,) target's normed hidden after reading seq[at]
    lows: list[torch.Tensor] = field(default_factory=list)  # (H,) layer-L residuals of the fed positions
    fed: int = 0  # positions fed so far, from ``at`` (the lows, where the view captures them)

    def rollout(self) -> Rollout:
        residuals = torch.stack(self.lows) if self.lows else None
        return Rollout(self.seq, self.at, self.first.unsqueeze(0), residuals)


@dataclass
class _InFlight:
    """A problem being mined in one row."""

    problem: Problem
    prompt: list[int]
    base: KVCache  # the current text's cache (positions [0, len(text) - 1) of prompt + answer)
    stop: object
    start: float
    job: _Job
    valid: int = 0  # the row agrees with ``base`` on positions [0, valid)
    walk: Walk | None = None
    steps: int = 0


class BatchMiner:
    """Mines up to ``settings.rows`` problems at once (see the module docstring)."""

    def __init__(self, stack: LayerStack, drafter, eos_ids, settings: MineSettings, piece=None):
        self.view = draft_view(drafter)
        if not isinstance(self.view, (SelfDraftView, LookupDraftView)):
            raise ConfigError(
                "batched mining (--rows > 1) needs a self-draft (self:...) or a lookup drafter (ngram); "
                "use --rows 1 for a separate draft model or an EAGLE head"
            )
        self.stack = stack
        self.eos = frozenset(int(i) for i in eos_ids)
        self.settings = settings
        self.piece = piece or str
        self.rows = settings.rows
        self.cache: RowCache | None = None
        self.on_label = None  # called with each MismatchLabel as it is decided (progress); set by the caller

    def _max_len(self, problem: Problem) -> int:
        return len(problem.prompt_ids) + self.settings.max_new_tokens + 2

    def _begin(self, problem: Problem) -> _InFlight:
        """Prefill the prompt (all but its last token) into a new base cache; the first job is the reference."""
        prompt = list(problem.prompt_ids)
        base = self.stack.new_cache(self._max_len(problem))
        if len(prompt) > 1:
            self.stack.run(self.stack.embed(torch.tensor(prompt[:-1])), base)
        stop = stopper(len(prompt), problem.task, self.settings.max_new_tokens, self.eos)
        now = time.perf_counter()
        return _InFlight(problem, prompt, base, stop, now, _Job(list(prompt), len(prompt) - 1, None, now))

    def _load(self, row: int, item: _InFlight) -> None:
        """Make the row hold the base's positions [0, job.at) (copying only where they may differ)."""
        at = item.job.at
        start = min(item.valid, at)
        if start < at:
            self.cache.load(row, item.base, start, at)
        self.cache.lengths[row] = at
        item.valid = at

    def mine_many(self, problems: Iterable[Problem]) -> Iterator[tuple[Problem, MinedProblem | Exception]]:
        """Yield (problem, MinedProblem or the AutojudgeError that stopped it) as problems finish."""
        problems = list(problems)
        if problems:
            self._ensure_cache(max(self._max_len(p) for p in problems))
        queue = iter(problems)
        slots: list[_InFlight | None] = [None] * self.rows
        while True:
            for row in range(self.rows):
                if slots[row] is None and (problem := next(queue, None)) is not None:
                    slots[row] = self._begin(problem)
                    self._load(row, slots[row])
            active = [row for row, item in enumerate(slots) if item is not None]
            if not active:
                return
            used = active[-1] + 1
            for row in range(used):
                if slots[row] is None:
                    self.cache.lengths[row] = 0  # an idle row inside the batch: writes to its slot 0
            ids = [slots[row].job.seq[-1] if slots[row] is not None else 0 for row in range(used)]
            normed, logits, low = self.stack.step_rows(ids, self.cache, self.view.capture_layer)
            best = logits.argmax(-1).tolist()
            for row in active:
                item = slots[row]
                item.steps += 1
                row_low = None if low is None else low[row]
                if not self._advance(item.job, item.stop, normed[row], row_low, best[row]):
                    continue
                try:
                    finished = self._resolve(row, item)
                except AutojudgeError as exc:
                    slots[row] = None
                    yield item.problem, exc
                    continue
                if finished is not None:
                    slots[row] = None
                    yield item.problem, finished

    def _ensure_cache(self, max_len: int) -> None:
        if self.cache is None or self.cache.max_len < max_len:
            self.cache = RowCache.for_model(
                self.stack.config, max_len, rows=self.rows, dtype=self.stack.dtype, device=self.stack.device
            )
        self.cache.lengths = [0] * self.rows

    @staticmethod
    def _advance(job: _Job, stop, normed: torch.Tensor, low: torch.Tensor | None, best: int) -> bool:
        """Record one step of ``job``; True once its continuation is finished (as ``TargetRunner.rollout``)."""
        if job.first is None:
            job.first = normed.clone()
        job.fed += 1
        if low is not None:
            job.lows.append(low.clone())
        if stop(job.seq):
            return True
        job.seq.append(best)
        return stop(job.seq)

    def _resolve(self, row: int, item: _InFlight) -> MinedProblem | None:
        """A job finished: update the search and queue the next job in this row, or return the result."""
        job, n_prompt = item.job, len(item.prompt)
        roll = job.rollout()
        fed_end = job.at + job.fed  # positions [0, fed_end) are in the row
        if job.j is None:  # the reference answer
            self.cache.save(row, item.base, job.at, fed_end)
            item.walk = Walk(
                item.problem, item.prompt, roll.tokens[n_prompt:], self.view.start(roll, n_prompt)
            )
            item.valid = fed_end
        elif item.walk.decide(job.j, roll, self.view, self.piece, job.tick):
            item.valid = job.at  # important: the text is unchanged; the row's tail is the alternative's
        else:
            self.cache.save(row, item.base, job.at, fed_end)  # unimportant: the alternative is the new text
            item.valid = fed_end
        if job.j is not None and self.on_label is not None:
            self.on_label(item.walk.labels[-1])
        j = item.walk.next_mismatch()
        if j is None:
            return item.walk.result(self.view, self.stack, item.steps, time.perf_counter() - item.start)
        walk = item.walk
        item.job = _Job(walk.prompt + walk.text[:j] + [walk.preds[j]], n_prompt + j, j, time.perf_counter())
        self._load(row, item)
        return None
