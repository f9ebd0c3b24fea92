"""The greedy speculative decoding loop, shared by every method; only the acceptance rule differs.

Conventions (batch size 1): ``seq`` is the committed text; the KV cache holds every committed position but
the last ("pending") token. A cycle drafts K tokens after ``seq``, verifies ``[pending, d_1..d_K]`` with one
target forward (logits ``y_1..y_{K+1}``), walks the window with the rule, appends the accepted drafts plus
one target token (the correction, or the bonus ``y_{K+1}`` when all K pass) and crops the caches back to
``len(seq) - 1``. A rollback only sets cache lengths. With no drafter this is plain greedy decoding.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from autojudge_eval.engine.acceptance import AcceptRule, ExactMatch, Mismatch
from autojudge_eval.engine.drafters import Drafter, Proposal
from autojudge_eval.engine.kv_cache import KVCache
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import ConfigError


@dataclass
class DecodeStats:
    """What one generation cost. ``target_calls`` counts decode/verify forwards (the prefill not included)."""

    prompt_tokens: int = 0
    new_tokens: int = 0
    cycles: int = 0
    target_calls: int = 0
    draft_calls: int = 0
    accepted: list[int] = field(default_factory=list)  # draft tokens accepted, per cycle
    proposed: list[int] = field(default_factory=list)  # draft tokens proposed (verified), per cycle
    mismatches_accepted: int = 0
    wall_time_s: float = 0.0
    stop_reason: str = ""

    @property
    def tokens_per_s(self) -> float:
        return self.new_tokens / self.wall_time_s if self.wall_time_s > 0 else 0.0

    @property
    def tokens_per_call(self) -> float:
        """New tokens per target call: accepted draft tokens + the target's own token (1.0 without drafts)."""
        return self.new_tokens / self.target_calls if self.target_calls else 0.0

    @property
    def accepted_per_cycle(self) -> float:
        """Draft tokens accepted per draft/verify cycle (0.0 without drafts)."""
        return sum(self.accepted) / self.cycles if self.cycles else 0.0

    @property
    def mean_accepted(self) -> float:
        return sum(self.accepted) / len(self.accepted) if self.accepted else 0.0

    def __add__(self, other: DecodeStats) -> DecodeStats:
        """The totals of two generations (``stop_reason`` is the later one's)."""
        return DecodeStats(
            prompt_tokens=self.prompt_tokens + other.prompt_tokens,
            new_tokens=self.new_tokens + other.new_tokens,
            cycles=self.cycles + other.cycles,
            target_calls=self.target_calls + other.target_calls,
            draft_calls=self.draft_calls + other.draft_calls,
            accepted=self.accepted + other.accepted,
            proposed=self.proposed + other.proposed,
            mismatches_accepted=self.mismatches_accepted + other.mismatches_accepted,
            wall_time_s=self.wall_time_s + other.wall_time_s,
            stop_reason=other.stop_reason,
        )


@dataclass(frozen=True)
class StopCriteria:
    """When to stop: end-of-sequence ids, stop strings (needs ``decode``), and a token budget."""

    max_new_tokens: int
    eos_ids: tuple[int, ...] = ()
    stop_strings: tuple[str, ...] = ()
    decode: Callable[[list[int]], str] | None = None

    def __post_init__(self) -> None:
        if self.stop_strings and self.decode is None:
            raise ConfigError("stop strings need a decode function (the tokenizer's)")

    def check(self, tokens: list[int]) -> tuple[int, str] | None:
        """Return (tokens to keep, reason) once generation must stop, else None. Keeps nothing past a stop.

        Tokens past the budget (a window's bonus token can overshoot it) are never searched for stops.
        """
        tokens = tokens[: self.max_new_tokens]
        for i, tok in enumerate(tokens):
            if tok in self.eos_ids:
                return i, "eos"
        if self.stop_strings:
            text = self.decode(tokens)
            hits = [text.find(s) for s in self.stop_strings if s and s in text]
            if hits:
                return self._tokens_through(tokens, min(hits)), "stop_string"
        if len(tokens) >= self.max_new_tokens:
            return self.max_new_tokens, "max_new_tokens"
        return None

    def _tokens_through(self, tokens: list[int], char_pos: int) -> int:
        """The shortest token prefix whose text reaches past ``char_pos`` (it holds the whole stop string)."""
        for n in range(1, len(tokens) + 1):
            text = self.decode(tokens[:n])
            if any(text.find(s) == char_pos for s in self.stop_strings if s):
                return n
        return len(tokens)


@torch.inference_mode()  # no autograd graph anywhere in decoding (the judge's features included)
def speculative_generate(
    target: LayerStack,
    drafter: Drafter | None,
    prompt_ids: Sequence[int],
    *,
    stop: StopCriteria,
    rule: AcceptRule | None = None,
    window: int = 4,
    cache: KVCache | None = None,
) -> tuple[list[int], DecodeStats]:
    """Greedy (speculative) decoding from ``prompt_ids``; returns the new tokens and their stats.

    ``drafter`` None gives plain greedy decoding with the target. ``rule`` None means lossless.
    """
    if not prompt_ids:
        raise ConfigError("cannot generate from an empty prompt")
    if window < 1:
        raise ConfigError(f"window (draft tokens per cycle, K) must be >= 1, got {window}")
    rule = rule or ExactMatch()
    if drafter is not None and rule.needs_hidden and not drafter.hidden_size:
        raise ConfigError(
            f"the {rule.name} rule reads draft hidden states (DD-DT features), but this {drafter.kind} "
            "drafter proposes none: use a DT judge (mine and train with --features DT) or a stand-in"
        )
    stats = DecodeStats(prompt_tokens=len(prompt_ids))
    sync_device(target.device)
    start = time.perf_counter()
    seq = torch.tensor(list(prompt_ids), dtype=torch.long, device=target.device)
    cache = cache or target.new_cache(len(prompt_ids) + stop.max_new_tokens + window + 2)
    cache.crop(0)
    if drafter is not None:
        drafter.reset(cache)
    if len(seq) > 1:
        prefilled = target.run(target.embed(seq[:-1]), cache)  # every prompt token but the pending one
        if drafter is not None and drafter.reads_features:
            drafter.observe(0, target.norm(prefilled)[0])
    generated: list[int] = []
    while True:
        if drafter is None:
            _, logits = target.forward(seq[-1:], cache)
            new, accepted, taken, proposed = [int(logits[-1].argmax())], 0, 0, 0
        else:
            k = min(window, stop.max_new_tokens - len(generated))
            new, accepted, taken, proposed = _speculate(target, drafter, seq, cache, rule, k)
        stats.target_calls += 1
        stats.cycles += 1
        stats.accepted.append(accepted)
        stats.proposed.append(proposed)
        stats.mismatches_accepted += taken
        generated.extend(new)
        seq = torch.cat([seq, torch.tensor(new, dtype=torch.long, device=seq.device)])
        cache.crop(len(seq) - 1)
        if drafter is not None:
            drafter.rollback(len(seq) - 1)
        done = stop.check(generated)
        if done is not None:
            keep, stats.stop_reason = done
            generated = generated[:keep]
            break
    sync_device(target.device)
    stats.wall_time_s = time.perf_counter() - start
    stats.new_tokens = len(generated)
    stats.draft_calls = drafter.calls if drafter is not None else 0
    return generated, stats


def verify(target: LayerStack, seq: torch.Tensor, proposal: Proposal, cache: KVCache):
    """One target forward over ``[pending, d_1..d_K]``: ((K+1, H) last hidden, (K+1, V) logits)."""
    if proposal.reuse is not None:  # a self-draft computed the first layers already
        layer, states = proposal.reuse
        tail = target.run(states, cache, layer, target.num_layers)
        return target.head(tail)
    return target.forward(torch.cat([seq[-1:], proposal.tokens]), cache)


def _speculate(target: LayerStack, drafter: Drafter, seq, cache, rule, k) -> tuple[list[int], int, int, int]:
    """Draft up to k tokens, verify them, walk the window: (new tokens, drafts accepted, mismatches taken,
    drafts proposed). An empty proposal (a lookup that found nothing) makes the verify a plain target step."""
    proposal = drafter.propose(seq, k, with_hidden=rule.needs_hidden)
    hidden, logits = verify(target, seq, proposal, cache)
    best = logits.argmax(-1).tolist()
    drafts = proposal.tokens.tolist()
    new, taken = [], 0
    for i, (d, y) in enumerate(zip(drafts, best[:-1], strict=True)):
        if d != y:
            mismatch = Mismatch(
                index=i,
                draft_token=d,
                target_token=y,
                target_logits=logits[i],
                draft_hidden=proposal.hidden[i] if proposal.hidden is not None else None,
                target_hidden=hidden[i + 1],
            )
            if not rule(mismatch):
                new.append(y)
                drafter.observe(len(seq) - 1, hidden[: i + 1])  # the pending token + i accepted drafts
                return new, i, taken, len(drafts)
            taken += 1
        new.append(d)
    new.append(best[len(drafts)])  # all k accepted: the bonus token
    drafter.observe(len(seq) - 1, hidden)
    return new, len(drafts), taken, len(drafts)


def sync_device(device: torch.device) -> None:
    """Wait for queued device work, so a clock read after it measures the work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
