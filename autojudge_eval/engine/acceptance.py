"""Acceptance rules: what to do when a draft token differs from the target's greedy token.

Matching tokens are always accepted by the decoding loop. A rule only sees mismatches and answers
"accept the draft token anyway?". The loop stops a cycle at the first mismatch a rule rejects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from autojudge_eval.engine.features import build_features, check_feature_set


@dataclass(frozen=True)
class Mismatch:
    """One draft/target disagreement inside a verification window."""

    index: int  # 0-based position in the window
    draft_token: int
    target_token: int
    target_logits: torch.Tensor  # (V,) the target's logits that predicted this position
    draft_hidden: torch.Tensor | None  # (Hd,) draft's last hidden state after reading the draft token
    target_hidden: torch.Tensor  # (H,) target's last hidden state after reading the draft token


class AcceptRule(Protocol):
    name: str
    needs_hidden: bool  # does the rule read the draft's hidden states?

    def __call__(self, mismatch: Mismatch) -> bool: ...


class ExactMatch:
    """Lossless speculative decoding: never accept a mismatch."""

    name = "lossless"
    needs_hidden = False

    def __call__(self, mismatch: Mismatch) -> bool:
        return False


@dataclass(frozen=True)
class TopK:
    """Accept a draft token that is among the target's top-k tokens (the paper's baseline)."""

    k: int
    name: str = "topk"
    needs_hidden: bool = False

    def __call__(self, mismatch: Mismatch) -> bool:
        logits = mismatch.target_logits
        return bool(logits[mismatch.draft_token] >= torch.topk(logits, self.k).values[-1])


class JudgeAccept:
    """AutoJudge: accept a mismatch when the judge's P(important) is below ``threshold``.

    ``judging.artifact`` is any callable from a (D,) float32 feature vector to P(important) in [0, 1].
    """

    name = "autojudge"

    def __init__(self, judge: Callable[[torch.Tensor], float], threshold: float, features: str = "DD-DT"):
        self.judge = judge
        self.threshold = threshold
        self.features = check_feature_set(features)
        self.needs_hidden = self.features == "DD-DT"

    def __call__(self, mismatch: Mismatch) -> bool:
        draft = mismatch.draft_hidden if mismatch.draft_hidden is not None else mismatch.target_hidden[:0]
        return (
            float(self.judge(build_features(self.features, draft, mismatch.target_hidden))) < self.threshold
        )


def constant_judge(p_important: float) -> Callable[[torch.Tensor], float]:
    """A stand-in judge with a fixed answer: 0.0 accepts every mismatch (the speed ceiling), 1.0 none."""

    def judge(features: torch.Tensor) -> float:
        return p_important

    return judge
