"""Label mining with the continuations served by a batching generation engine (vLLM: ``vllm.mining``).

The search is ``mining.search``'s, on the same :class:`~autojudge_eval.mining.walk.Walk`, so the labels are
the same; only where the continuations run differs. Each problem in flight has one greedy continuation
request at a time. The engine batches the requests of all problems in flight: a problem's next request goes
in as soon as its last one is decided (continuous batching, as ``mining.batch`` does with rows), and with
prefix caching the engine reuses the prompt and the answer prefix that a problem's successive requests
share. Requests stream their tokens; one is cancelled as soon as the stop rule holds (EOS, the token budget,
or the outcome decided), where the HF runner stops too.

An engine returns tokens, not hidden states, so the DT features come from the HF target afterwards:
:func:`replay_target_features` reads each mismatch's row off the final text in one teacher-forced pass (plus
one one-token forward per important mismatch). Only lookup drafters mine this way: their predictions come
from the text alone, while a self-draft's or an EAGLE head's would need the target's states along every
continuation.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import AutojudgeError, ConfigError
from autojudge_eval.mining.records import MismatchLabel
from autojudge_eval.mining.rollout import LookupDraftView, draft_view
from autojudge_eval.mining.walk import MinedProblem, MineSettings, Problem, Walk, stack_rows, stopper


class GreedyService(Protocol):
    """Greedy generation requests on an engine that batches them (``vllm.mining.VllmGreedy``)."""

    def submit(self, key: str, prompt: Sequence[int], max_tokens: int) -> None:
        """Start generating greedily after ``prompt``, at most ``max_tokens`` tokens, stopping after EOS."""
        ...

    def poll(self) -> list[tuple[str, list[int], bool]]:
        """Advance the engine: (key, tokens new since the last poll, finished) for requests that moved."""
        ...

    def cancel(self, key: str) -> None:
        """Stop a request (its tokens so far were enough)."""
        ...


@torch.inference_mode()
def replay_target_features(
    stack: LayerStack, prompt: Sequence[int], answer: Sequence[int], labels: Sequence[MismatchLabel]
) -> torch.Tensor:
    """(m, H) float32: the target's last hidden state after reading each mismatch's draft token.

    The search changes the text only after the mismatch it decides, so the text before every mismatch is
    the final text's. At an unimportant mismatch the final text holds the draft token; at an important one it
    holds the target's, and the draft token is fed on its own, then forgotten.
    """
    seq = [*prompt, *answer]
    cache = stack.new_cache(len(seq) + 1)
    rows = []
    device = stack.device
    for label in labels:
        at = len(prompt) + label.position
        if not label.important and seq[at] != label.draft_token:
            raise RuntimeError(
                f"problem {label.problem_id}: the final text has {seq[at]} at answer position "
                f"{label.position}, not the draft token {label.draft_token} of its unimportant mismatch"
            )
        if cache.length() < at:
            stack.run(stack.embed(torch.tensor(seq[cache.length() : at], device=device)), cache)
        hidden = stack.run(stack.embed(torch.tensor([label.draft_token], device=device)), cache)
        rows.append(stack.norm(hidden)[0, -1].float().cpu())
        if label.important:
            cache.crop(at)
    return stack_rows(rows, stack.hidden_size)


@dataclass
class _Text:
    """What ``Walk.decide`` and a lookup view read of a continuation: its tokens. The target's hidden state
    is a placeholder here; :func:`replay_target_features` fills the rows in once the problem is done."""

    tokens: list[int]
    blank: torch.Tensor

    def target_hidden(self, position: int) -> torch.Tensor:
        return self.blank


@dataclass
class _Live:
    """A problem in flight: its search, and the continuation it waits for."""

    problem: Problem
    prompt: list[int]
    stop: object
    start: float
    seq: list[int] = field(default_factory=list)  # the continuation so far (prompt included)
    j: int | None = None  # the answer position of its mismatch; None for the reference answer
    tick: float = 0.0
    walk: Walk | None = None
    generated: int = 0  # tokens the engine generated for this problem


def lookup_view(drafter) -> LookupDraftView:
    """The mining view of ``drafter``, which must be a lookup drafter: the only kind a token-only engine can
    mine for (the module docstring)."""
    view = draft_view(drafter)
    if not isinstance(view, LookupDraftView):
        raise ConfigError(
            "mining on vLLM needs a lookup drafter (--draft ngram): a self-draft's or an EAGLE head's "
            "predictions need the target's states along every continuation, which vLLM does not return; "
            "mine those pairs with the HF engine (--engine hf)"
        )
    return view


class StreamMiner:
    """Mines up to ``settings.rows`` problems at once on a :class:`GreedyService` (module docstring).

    ``stack`` is the HF target, the same model as the engine's: it computes the features, not the labels.
    """

    def __init__(
        self, service: GreedyService, stack: LayerStack, drafter, eos_ids, settings: MineSettings, piece=None
    ):
        self.view = lookup_view(drafter)
        self.service = service
        self.stack = stack
        self.eos = frozenset(int(i) for i in eos_ids)
        self.settings = settings
        self.piece = piece or str
        self.rows = settings.rows
        self._keys = itertools.count()
        self._blank = torch.zeros(stack.hidden_size)
        self.on_label = None  # called with each MismatchLabel as it is decided (progress); set by the caller

    def mine_many(self, problems: Iterable[Problem]) -> Iterator[tuple[Problem, MinedProblem | Exception]]:
        """Yield (problem, MinedProblem or the AutojudgeError that stopped it) as problems finish."""
        queue = iter(problems)
        live: dict[str, _Live] = {}
        while True:
            while len(live) < self.rows and (problem := next(queue, None)) is not None:
                prompt = list(problem.prompt_ids)
                stop = stopper(len(prompt), problem.task, self.settings.max_new_tokens, self.eos)
                item = _Live(problem, prompt, stop, time.perf_counter())
                yield from self._launch(item, list(prompt), None, live)
            if not live:
                return
            for key, tokens, finished in self.service.poll():
                item = live.get(key)
                if item is None:  # a cancelled request's last tokens
                    continue
                item.generated += len(tokens)
                done = False
                for token in tokens:
                    item.seq.append(int(token))
                    if item.stop(item.seq):
                        done = True
                        break
                if not (done or finished):
                    continue
                del live[key]
                if not done:
                    answer = len(item.seq) - len(item.prompt)
                    exc = AutojudgeError(
                        f"problem {item.problem.id}: the engine ended a continuation after {answer} answer "
                        "tokens, before EOS, the budget or the outcome (check the engine's max_model_len)"
                    )
                    yield item.problem, exc
                    continue
                if not finished:
                    self.service.cancel(key)
                yield from self._resolve(item, live)

    def _launch(self, item: _Live, seq: list[int], j: int | None, live: dict) -> Iterator:
        """Start the continuation ``seq`` (resolved at once if the stop rule already holds)."""
        item.seq, item.j, item.tick = seq, j, time.perf_counter()
        if item.stop(seq):
            yield from self._resolve(item, live)
            return
        key = f"{item.problem.id}#{next(self._keys)}"
        budget = self.settings.max_new_tokens - (len(seq) - len(item.prompt))
        self.service.submit(key, seq, budget)
        live[key] = item

    def _resolve(self, item: _Live, live: dict) -> Iterator:
        """A continuation is complete: decide its mismatch, then start the next one or finish the problem."""
        roll, n_prompt = _Text(item.seq, self._blank), len(item.prompt)
        try:
            if item.j is None:
                item.walk = Walk(
                    item.problem, item.prompt, roll.tokens[n_prompt:], self.view.start(roll, n_prompt)
                )
            else:
                item.walk.decide(item.j, roll, self.view, self.piece, item.tick)
                if self.on_label is not None:
                    self.on_label(item.walk.labels[-1])
            walk = item.walk
            j = walk.next_mismatch()
            if j is not None:
                yield from self._launch(item, walk.prompt + walk.text[:j] + [walk.preds[j]], j, live)
                return
            features = replay_target_features(self.stack, walk.prompt, walk.text, walk.labels)
        except AutojudgeError as exc:
            yield item.problem, exc
            return
        walk.target_rows = list(features)
        steps = item.generated + len(walk.labels) + 1  # the sequences' engine steps, plus the replay's feeds
        yield item.problem, walk.result(self.view, self.stack, steps, time.perf_counter() - item.start)
