"""The only place that builds judge feature vectors from hidden states.

At a mismatch, both models have read the draft token: ``draft`` is the draft model's last hidden state
(the input of its LM head) after reading it, ``target`` the target's at the same position, as in the
AutoJudge paper. "DD-DT" concatenates both; "DT" keeps the target's alone.
"""

from __future__ import annotations

import torch

from autojudge_eval.errors import ConfigError

FEATURE_SETS = ("DD-DT", "DT")


def check_feature_set(name: str) -> str:
    if name not in FEATURE_SETS:
        raise ConfigError(f"unknown feature set {name!r}; choose one of {', '.join(FEATURE_SETS)}")
    return name


def feature_dim(name: str, draft_hidden: int, target_hidden: int) -> int:
    check_feature_set(name)
    return draft_hidden + target_hidden if name == "DD-DT" else target_hidden


def build_features(name: str, draft: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., Hd) and (..., H) hidden states -> (..., D) float32 features."""
    if name == "DD-DT":
        return torch.cat([draft.float(), target.float()], dim=-1)
    if name == "DT":
        return target.float()
    raise ConfigError(f"unknown feature set {name!r}; choose one of {', '.join(FEATURE_SETS)}")
