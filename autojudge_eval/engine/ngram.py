"""Prompt-lookup drafting: no draft model, the draft is a copy of what followed the same n-gram before.

:class:`NgramIndex` maps every n-gram of a text (n_min <= n <= n_max) to the position after its most recent
occurrence. To propose after a text it looks up the text's last n tokens, from n_max down to n_min, and
returns up to K tokens that followed the most recent earlier occurrence. This is the idea behind
transformers' ``prompt_lookup_num_tokens`` and vLLM's ``ngram`` speculative method.

When nothing matches, the proposal is empty and the engine's verify forward is a plain one-token target
step: a cycle without a match costs what target-only decoding costs. A lookup drafter has no hidden states,
so judges that read draft features (DD-DT) cannot run with it; DT judges (the target's state) can.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from autojudge_eval.config import NGRAM_DEFAULTS
from autojudge_eval.engine.drafters import Proposal
from autojudge_eval.engine.kv_cache import KVCache
from autojudge_eval.errors import ConfigError

DEFAULT_N_MAX = NGRAM_DEFAULTS["n_max"]
DEFAULT_N_MIN = NGRAM_DEFAULTS["n_min"]


def check_ngram_sizes(n_max: int, n_min: int) -> None:
    if not 1 <= n_min <= n_max:
        raise ConfigError(f"ngram drafter needs 1 <= n_min <= n_max, got n_min={n_min}, n_max={n_max}")


class NgramIndex:
    """An incremental n-gram index over a growing text (token ids); see the module docstring."""

    def __init__(self, n_max: int = DEFAULT_N_MAX, n_min: int = DEFAULT_N_MIN) -> None:
        check_ngram_sizes(n_max, n_min)
        self.n_max, self.n_min = n_max, n_min
        self.tokens: list[int] = []
        self._after: dict[tuple[int, ...], int] = {}  # n-gram -> index of the token after its latest end
        self._indexed = 0  # n-grams followed by a token at index < this are in the index

    def reset(self, tokens: Sequence[int] = ()) -> None:
        self.tokens, self._after, self._indexed = [], {}, 0
        self.extend(tokens)

    def extend(self, tokens: Sequence[int]) -> None:
        self.tokens.extend(int(t) for t in tokens)
        # index every n-gram that a token follows, except the text's own suffix (nothing follows it yet)
        text, after = self.tokens, self._after
        for follow in range(max(self._indexed, 1), len(text)):
            for n in range(self.n_min, min(self.n_max, follow) + 1):
                after[tuple(text[follow - n : follow])] = follow
        self._indexed = max(self._indexed, len(text))

    def propose(self, k: int) -> list[int]:
        """Up to ``k`` tokens that followed the most recent earlier occurrence of the longest matching suffix."""
        text = self.tokens
        if k <= 0:
            return []
        for n in range(min(self.n_max, len(text) - 1), self.n_min - 1, -1):
            follow = self._after.get(tuple(text[len(text) - n :]))
            if follow is not None:
                return text[follow : follow + k]
        return []

    def predictions(self, text: Sequence[int], start: int) -> list[int]:
        """For every position i >= ``start`` of ``text``: the first token a lookup over ``text[:i]`` proposes,
        or ``text[i]`` itself where nothing matches (no proposal, so no disagreement). Resets the index."""
        self.reset(text[:start])
        out = []
        for i in range(start, len(text)):
            proposal = self.propose(1)
            out.append(proposal[0] if proposal else int(text[i]))
            self.extend(text[i : i + 1])
        return out


class NgramDrafter:
    """A :class:`~autojudge_eval.engine.drafters.Drafter` that proposes by lookup (no draft forward at all).

    ``calls`` counts lookups that proposed at least one token (empty lookups are plain target steps).
    """

    kind = "lookup"
    model = None
    hidden_size = 0  # proposes no hidden states: DD-DT judges cannot run with it
    reuses_target_states = False
    reads_features = False

    def __init__(self, n_max: int = DEFAULT_N_MAX, n_min: int = DEFAULT_N_MIN) -> None:
        self.index = NgramIndex(n_max, n_min)
        self.calls = 0

    def reset(self, target_cache: KVCache) -> None:
        self.index.reset()
        self.calls = 0

    def propose(self, seq: torch.Tensor, k: int, *, with_hidden: bool) -> Proposal:
        if with_hidden:
            raise ConfigError(
                "the ngram drafter has no draft model and so no draft hidden states: a DD-DT judge cannot "
                "run with it; use a DT judge (mined and trained with --features DT) or a stand-in"
            )
        known = len(self.index.tokens)
        if known > len(seq):
            self.index.reset(seq.tolist())
        elif known < len(seq):
            self.index.extend(seq[known:].tolist())
        tokens = self.index.propose(k)
        self.calls += bool(tokens)
        return Proposal(tokens=torch.tensor(tokens, dtype=torch.long, device=seq.device))

    def observe(self, start: int, features: torch.Tensor) -> None:
        """A lookup reads the text only."""

    def rollback(self, length: int) -> None:
        """Proposals never enter the index; the committed text only grows within a generation."""
