"""Target rollouts and draft predictions for label mining, with KV-cache reuse.

Mining asks, many times per problem: "replace the token at position j by the draft's token and let the target
continue greedily". Three things make that cheap here:

* the continuation starts from a cache that already holds the shared prefix (only the positions since the
  previous alternative are copied between two preallocated caches, see :func:`sync_prefix`);
* the target verifies tokens of the *previous* text as proposals (prompt lookup against the text being
  replaced): a continuation that re-joins the old text costs one forward per window instead of one per token.
  Greedy verification keeps the output the target's own greedy continuation;
* draft predictions for a whole text come from one pass: for a self-draft from the layer-L residuals the
  target computed anyway, for a separate draft model from one teacher-forced forward, for an EAGLE head from
  one teacher-forced head pass over the target's last hidden states (which the rollouts then record).

Cache convention: a cache of length c holds the positions ``seq[:c]``; a rollout feeds ``seq[c:]`` first.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from autojudge_eval.engine.drafters import Drafter, EarlyExit, FullModel
from autojudge_eval.engine.eagle import EagleModel
from autojudge_eval.engine.kv_cache import KVCache
from autojudge_eval.engine.ngram import NgramIndex
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import ConfigError


@dataclass
class Rollout:
    """A greedy continuation: the full sequence and what mining reads from the target's passes."""

    tokens: list[int]  # prompt + answer, up to and including the stopping token
    fed_start: int  # absolute position of the first token this rollout fed
    first_hidden: torch.Tensor  # (q0, H) target's last hidden states over the first feed
    residuals: torch.Tensor | None  # (n, H) layer-L residuals of the fed positions from fed_start
    features: torch.Tensor | None = None  # (n, H) last hidden states of the fed positions, when captured
    forwards: int = 0
    proposed: int = 0
    accepted: int = 0

    def target_hidden(self, position: int) -> torch.Tensor:
        """(H,) the target's last hidden state after reading the token at absolute ``position``."""
        return self.first_hidden[position - self.fed_start]


@dataclass
class TargetRunner:
    """Greedy rollouts of the target, optionally recording the layer-``capture_layer`` residuals and (with
    ``capture_features``) the last hidden states of every fed position, not only those of the first feed."""

    stack: LayerStack
    capture_layer: int | None = None
    lookahead: int = 8  # old-text tokens verified per forward (0: one token per forward)
    ngram: int = 3
    capture_features: bool = False
    forwards: int = field(default=0, init=False)

    @torch.inference_mode()
    def feed(self, ids: Sequence[int], cache: KVCache):
        """(q,) ids -> ((q, H) normed hidden, (q, V) logits, (q, H) residual at capture_layer or None)."""
        x = self.stack.embed(torch.tensor(list(ids), dtype=torch.long, device=self.stack.device))
        self.forwards += 1
        if self.capture_layer is None:
            normed, logits = self.stack.head(self.stack.run(x, cache))
            return normed, logits, None
        low = self.stack.run(x, cache, 0, self.capture_layer)
        normed, logits = self.stack.head(
            self.stack.run(low, cache, self.capture_layer, self.stack.num_layers)
        )
        return normed, logits, low[0]

    def rollout(
        self, seq: list[int], cache: KVCache, stop: Callable[[list[int]], bool], source: Sequence[int] = ()
    ) -> Rollout:
        """Feed ``seq[cache length:]``, then extend ``seq`` greedily until ``stop(seq)``.

        ``source`` is text the continuation may re-join (the answer being replaced): its tokens are verified as
        proposals, ``lookahead`` at a time. The result is the target's greedy continuation either way.
        """
        seq, start, calls = list(seq), cache.length(), self.forwards
        normed, logits, low = self.feed(seq[start:], cache)
        out = Rollout(seq, start, normed, None)
        residuals = [low] if low is not None else []
        features = [normed] if self.capture_features else []
        last, hint = logits[-1], 0
        while not stop(seq):
            seq.append(int(last.argmax()))
            if stop(seq):
                break
            proposal, hint = lookup(seq, source, self.lookahead, self.ngram, hint)
            base = cache.length()
            normed, logits, low = self.feed([seq[-1], *proposal], cache)
            best = logits.argmax(-1).tolist()
            keep = 1
            for token, predicted in zip(proposal, best, strict=False):
                if token != predicted:
                    break
                seq.append(token)
                keep += 1
                if stop(seq):
                    break
            out.proposed += len(proposal)
            out.accepted += keep - 1
            hint += keep - 1
            cache.crop(base + keep)
            if low is not None:
                residuals.append(low[:keep])
            if features:
                features.append(normed[:keep])
            last = logits[keep - 1]
        out.residuals = torch.cat(residuals) if residuals else None
        out.features = torch.cat(features) if features else None
        out.forwards = self.forwards - calls
        return out


def lookup(seq: Sequence[int], source: Sequence[int], k: int, ngram: int, hint: int) -> tuple[list[int], int]:
    """Up to ``k`` tokens of ``source`` that follow the longest (<= ``ngram``) suffix of ``seq`` found there.

    ``hint`` is the index in ``source`` where ``seq``'s last token is expected; matches ending there or later
    are preferred. Returns (tokens, the index in ``source`` where the token after ``seq`` is expected: that of
    the first token returned, else ``hint + 1``).
    """
    if k <= 0 or not source:
        return [], hint + 1
    for n in range(min(ngram, len(seq)), 0, -1):
        tail, last = list(seq[-n:]), len(source) - n  # a match needs a token after it: i < last
        start = min(max(hint - n + 1, 0), last)
        for i in (*range(start, last), *range(0, start)):
            if source[i] == tail[0] and list(source[i : i + n]) == tail:
                return list(source[i + n : i + n + k]), i + n
    return [], hint + 1


def sync_prefix(src: KVCache, dst: KVCache, valid: int, length: int) -> None:
    """Make ``dst`` hold ``src``'s first ``length`` positions, given they already agree on ``[0, valid)``.

    Copies only ``[valid, length)``; both caches are preallocated, so this is a slice copy, not a forward.
    """
    if src.length() < length or valid > length:
        raise RuntimeError(f"cannot sync cache prefix {valid}..{length} from a cache of {src.length()}")
    if valid < length:
        dst.keys[:, :, :, valid:length] = src.keys[:, :, :, valid:length]
        dst.values[:, :, :, valid:length] = src.values[:, :, :, valid:length]
    dst.lengths = [length] * dst.num_layers


class SelfDraftView:
    """Predictions of a self-draft (an early exit of the target) from the target's own layer-L residuals."""

    reads_features = False

    def __init__(self, exit_model: EarlyExit) -> None:
        self.model = exit_model
        self.capture_layer = exit_model.exit_layer
        self.hidden_size = exit_model.hidden_size

    def reset(self, max_len: int) -> None:
        """Nothing to allocate: the residuals come with the target's rollouts."""

    @torch.inference_mode()
    def _predict(self, residuals: torch.Tensor) -> list[int]:
        if len(residuals) == 0:
            return []
        return self.model.tokens(self.model.hidden(residuals.unsqueeze(0))).tolist()

    def start(self, roll: Rollout, prompt_len: int) -> list[int]:
        """Draft predictions for every answer position of the reference rollout (from the prompt's end on)."""
        first = prompt_len - 1 - roll.fed_start
        return self._predict(roll.residuals[first : first + len(roll.tokens) - prompt_len])

    @torch.inference_mode()
    def mismatch(self, roll: Rollout, position: int) -> torch.Tensor:
        """(Hd,) the draft's last hidden state after reading the draft token at absolute ``position``."""
        row = roll.residuals[position - roll.fed_start]
        return self.model.hidden(row.view(1, 1, -1))[0]

    def accept(self, roll: Rollout, position: int) -> list[int]:
        """Predictions for the answer positions after ``position`` in the accepted alternative."""
        first = position - roll.fed_start
        return self._predict(roll.residuals[first : first + len(roll.tokens) - 1 - position])

    def reject(self, position: int) -> None:
        """Nothing to undo."""


class ModelDraftView:
    """Predictions of a draft with its own cache, computed teacher-forced over whole texts in one pass."""

    capture_layer = None
    reads_features = False

    def __init__(self, model: FullModel | EarlyExit) -> None:
        self.model = model
        self.hidden_size = model.hidden_size
        self.cache: KVCache | None = None
        self.valid = 0  # the cache holds the current text's first `valid` positions
        self._next: list[int] = []

    def reset(self, max_len: int) -> None:
        if self.cache is None or self.cache.max_len < max_len:
            self.cache = self.model.new_cache(max_len)
        self.cache.crop(0)
        self.valid = 0

    @torch.inference_mode()
    def _pass(self, ids: Sequence[int]) -> tuple[torch.Tensor, list[int]]:
        """Teacher-forced draft pass over ``ids`` from the cache's length: ((q, Hd) hidden, q greedy tokens)."""
        x = torch.tensor(list(ids), dtype=torch.long, device=self.model.stack.device)
        if isinstance(self.model, FullModel):
            normed, logits = self.model.stack.forward(x, self.cache)
            return normed, logits[:, : self.model.target_vocab].argmax(-1).tolist()
        normed = self.model.hidden(self.model.lower(x, self.cache))
        return normed, self.model.tokens(normed).tolist()

    def start(self, roll: Rollout, prompt_len: int) -> list[int]:
        self.cache.crop(0)
        _, tokens = self._pass(roll.tokens[:-1])
        self.valid = len(roll.tokens) - 1
        return tokens[prompt_len - 1 :]

    def mismatch(self, roll: Rollout, position: int) -> torch.Tensor:
        self.cache.crop(min(self.valid, position))
        hidden, tokens = self._pass(roll.tokens[self.cache.length() : position + 1])
        self._next = tokens[-1:]
        return hidden[-1]

    def accept(self, roll: Rollout, position: int) -> list[int]:
        _, tokens = (
            self._pass(roll.tokens[position + 1 : -1]) if len(roll.tokens) > position + 2 else (None, [])
        )
        self.valid = len(roll.tokens) - 1
        return (self._next + tokens)[: len(roll.tokens) - 1 - position]

    def reject(self, position: int) -> None:
        self.valid = position
        self.cache.crop(position)


class LookupDraftView:
    """Predictions of a lookup drafter (``engine.ngram``): at each position, the lookup over the text before.

    Where a lookup finds nothing the prediction is the text's own token (no proposal, no disagreement). It has
    no hidden states: the rows it gives mining are empty, so only DT judges can be trained on its labels.
    """

    capture_layer = None
    reads_features = False
    hidden_size = 0

    def __init__(self, drafter: Drafter) -> None:
        self.index = NgramIndex(drafter.index.n_max, drafter.index.n_min)

    def reset(self, max_len: int) -> None:
        """Nothing to allocate."""

    def start(self, roll: Rollout, prompt_len: int) -> list[int]:
        return self.index.predictions(roll.tokens, prompt_len)

    def mismatch(self, roll: Rollout, position: int) -> torch.Tensor:
        return torch.zeros(0)

    def accept(self, roll: Rollout, position: int) -> list[int]:
        return self.index.predictions(roll.tokens, position + 1)

    def reject(self, position: int) -> None:
        """Nothing to undo."""


class EagleDraftView:
    """Predictions of an EAGLE head (``engine.eagle``), teacher-forced on the text and the target's features.

    Head row t reads (the target's feature f_t, token t+1) and predicts f_{t+1}; the token of that prediction
    is the draft for position t+2: what ``EagleDrafter.propose`` gives first after the text up to there. The
    features come with the rollouts (``reads_features``: the runner records every fed position's); those of
    the current text are kept by position, since an alternative's rollout feeds only from its mismatch on.

    At a mismatch at position p the draft hidden state is the proposal's first one: head row p-1 read from
    (its own prediction of f_{p-1}, the draft token). That row is then forgotten, as the drafter forgets rows
    written from its own predictions. Within a decoding window the later drafts read the head's predicted
    features instead of the target's, so mined labels describe the first draft of a window exactly.
    """

    capture_layer = None
    reads_features = True

    def __init__(self, model: EagleModel) -> None:
        self.model = model
        self.hidden_size = model.hidden_size
        self.cache: KVCache | None = None
        self.features: torch.Tensor | None = None  # (max_len, H) the current text's target features
        self.predicted: torch.Tensor | None = None  # (max_len, H) head row t's prediction of f_{t+1}
        self.valid = 0  # head rows [0, valid) were written from the current text and the target's features

    def reset(self, max_len: int) -> None:
        if self.cache is None or self.cache.max_len < max_len:
            stack = self.model.stack
            self.cache = self.model.new_cache(max_len)
            self.features = torch.zeros(max_len, self.hidden_size, dtype=stack.dtype, device=stack.device)
            self.predicted = torch.zeros_like(self.features)
        self.cache.crop(0)
        self.valid = 0

    def _read(self, roll: Rollout) -> None:
        """Keep the features ``roll`` computed (its fed positions; those before are the current text's)."""
        self.features[roll.fed_start : roll.fed_start + len(roll.features)] = roll.features

    @torch.inference_mode()
    def _rows(self, tokens: Sequence[int], end: int) -> list[int]:
        """Write head rows ``[valid, end)`` from ``tokens``; the drafts for positions ``valid + 2 .. end + 1``."""
        start = self.valid
        self.cache.crop(start)
        if end <= start:
            return []
        ids = torch.tensor(
            list(tokens[start + 1 : end + 1]), dtype=torch.long, device=self.model.stack.device
        )
        predicted = self.model.step(ids, self.features[start:end], self.cache)
        self.predicted[start:end] = predicted
        self.valid = end
        return self.model.tokens(predicted).tolist()

    def start(self, roll: Rollout, prompt_len: int) -> list[int]:
        """Drafts for every answer position; position 1 has none (no feature yet): its own token stands in."""
        self._read(roll)
        self.valid = 0
        drafts = self._rows(roll.tokens, len(roll.tokens) - 2)
        first = roll.tokens[1:2] if prompt_len == 1 else []
        return first + drafts[max(prompt_len - 2, 0) :]

    @torch.inference_mode()
    def mismatch(self, roll: Rollout, position: int) -> torch.Tensor:
        self.valid = min(self.valid, position - 1)
        self._rows(roll.tokens, position - 1)
        draft = torch.tensor([roll.tokens[position]], dtype=torch.long, device=self.model.stack.device)
        hidden = self.model.step(draft, self.predicted[position - 2 : position - 1], self.cache)
        self.cache.crop(position - 1)
        return hidden[0]

    def accept(self, roll: Rollout, position: int) -> list[int]:
        self._read(roll)
        return self._rows(roll.tokens, len(roll.tokens) - 2)

    def reject(self, position: int) -> None:
        """Rows from ``position - 1`` on are rewritten from the current text at the next mismatch."""


def draft_view(drafter: Drafter) -> SelfDraftView | ModelDraftView | LookupDraftView | EagleDraftView:
    """The view that mining uses for a pair's drafter, by the drafter's ``kind``: a self-draft reads the
    target's own residuals, a draft model runs teacher-forced over whole texts in its own cache, a lookup
    drafter looks up the text before each position, an EAGLE head runs teacher-forced over the target's
    features."""
    if drafter is None:
        raise ConfigError(
            "mining needs a draft model: load the pair with a draft (e.g. the default self-draft)"
        )
    if drafter.kind == "self":
        return SelfDraftView(drafter.model)
    if drafter.kind == "model":
        return ModelDraftView(drafter.model)
    if drafter.kind == "lookup":
        return LookupDraftView(drafter)
    if drafter.kind == "eagle":
        return EagleDraftView(drafter.model)
    raise ConfigError(
        f"no mining view for a drafter of kind {drafter.kind!r}; known: self, model, lookup, eagle"
    )
