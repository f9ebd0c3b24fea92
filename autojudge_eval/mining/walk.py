"""The state of one problem's semi-greedy search, shared by the one-at-a-time and the batched miner.

:class:`Walk` holds the text, the position of the next undecided mismatch and the labels so far;
``mining.search.Miner`` and ``mining.batch.BatchMiner`` differ only in how they run its continuations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from autojudge_eval.mining.outcomes import OutcomeTask
from autojudge_eval.mining.records import MismatchLabel, ProblemRecord


@dataclass(frozen=True)
class MineSettings:
    max_new_tokens: int = 400  # answer budget of the reference and of every continuation
    reuse_cache: bool = True  # False: recompute the prefix for every alternative (the paper's baseline)
    lookahead: int = 8  # old-text tokens the target verifies per forward in a continuation (0: off)
    rows: int = 1  # >1: that many problems in flight, their continuations batched (mining/batch.py)

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


@dataclass
class Walk:
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
        draft = stack_rows(self.draft_rows, view.hidden_size)
        target = stack_rows(self.target_rows, stack.hidden_size)
        return MinedProblem(record, labels, draft, target, self.text, self.reference_text)


def stopper(prompt_len: int, task: OutcomeTask, budget: int, eos: frozenset[int]):
    """``stop(seq)``: the answer in ``seq`` (after the prompt) ended, hit the budget or decided its outcome."""

    def stop(seq: list[int]) -> bool:
        n = len(seq) - prompt_len
        if n <= 0:
            return False
        return seq[-1] in eos or n >= budget or task.decided(seq[prompt_len:])

    return stop


def stack_rows(rows: list[torch.Tensor], size: int) -> torch.Tensor:
    return torch.stack(rows) if rows else torch.zeros(0, size)
