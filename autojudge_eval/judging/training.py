"""Fit a judge on mined labels: StandardScaler + LogisticRegression over a grid of C, split by problem.

Model selection uses grouped K-fold cross-validation (no problem has tokens on both sides of a split): each C
gets out-of-fold P(important) for every mismatch, scored by ROC-AUC. At the best C, the out-of-fold scores
also give the thresholds that keep recall of important tokens at 0.9 / 0.95 / 0.99, and the share of
mismatches the judge would accept there. The judge that ships is refitted on all problems at that C, so its
thresholds are cross-validated estimates for it. It is exported as four arrays (``judging.artifact.Judge``).
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from autojudge_eval.engine.features import build_features, check_feature_set
from autojudge_eval.errors import ConfigError, DataError
from autojudge_eval.judging.artifact import AGREEMENT_MEANING, Judge, label_meaning
from autojudge_eval.mining.records import MinedData

log = logging.getLogger(__name__)

RECALLS = (0.9, 0.95, 0.99)
DEFAULT_CS = (0.0001, 0.001, 0.01, 0.1, 1.0)


@dataclass
class TrainingData:
    """Features, labels (True = important) and the problem of every mismatch, plus where they came from."""

    x: np.ndarray  # (n, D) float32
    y: np.ndarray  # (n,) bool
    groups: np.ndarray  # (n,) problem ids
    features: str
    meta: dict = field(default_factory=dict)  # task, pair, hidden sizes, sources
    positions: np.ndarray | None = None  # (n,) position of each mismatch in its answer (for a reference)

    @property
    def sha256(self) -> str:
        """Hash of exactly what the judge is fitted on (features, labels, problem ids)."""
        digest = hashlib.sha256()
        digest.update(np.ascontiguousarray(self.x, dtype=np.float32).tobytes())
        digest.update(self.y.astype(np.uint8).tobytes())
        digest.update("\n".join(map(str, self.groups)).encode())
        return digest.hexdigest()

    def counts(self) -> dict:
        return {
            "problems": len(set(self.groups.tolist())),
            "mismatches": len(self.y),
            "important": int(self.y.sum()),
            "sha256": self.sha256,
        }


def training_data(mined: MinedData, features: str = "DD-DT") -> TrainingData:
    """Turn mined records into a training set; all parts must come from one task and one pair."""
    check_feature_set(features)
    keys = ("task", "pair", "target_hidden_size", "draft_hidden_size")
    first = mined.manifests[0]
    for manifest in mined.manifests[1:]:
        for key in keys:
            if manifest.get(key) != first.get(key):
                raise DataError(
                    f"mined parts disagree on {key}: {first.get(key)!r} ({first['folder']}) vs "
                    f"{manifest.get(key)!r} ({manifest['folder']}); train on one task and pair at a time"
                )
    x = build_features(features, mined.draft_hidden, mined.target_hidden).numpy()
    y = np.array([label.important for label in mined.labels], dtype=bool)
    groups = np.array([label.problem_id for label in mined.labels])
    meta = {key: first.get(key) for key in keys}
    meta["sources"] = [
        {
            "folder": m["folder"],
            "part": m.get("part"),
            "problems": m["counts"]["problems"],
            "label_settings": m.get("label_settings"),
            "data": m.get("data"),
        }
        for m in mined.manifests
    ]
    positions = np.array([label.position for label in mined.labels], dtype=np.float64)
    return TrainingData(x, y, groups, features, meta, positions)


def group_folds(groups: np.ndarray, k: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """K folds over problems (``groups``): a problem's mismatches are all on one side of every split."""
    from sklearn.model_selection import GroupKFold

    n_groups = len(set(groups.tolist()))
    if n_groups < 2:
        raise DataError(f"training needs mismatches from at least 2 problems, found {n_groups}")
    splitter = GroupKFold(n_splits=min(k, n_groups), shuffle=True, random_state=seed)
    return list(splitter.split(np.zeros(len(groups)), groups=groups))


def fit_scaled_lr(x: np.ndarray, y: np.ndarray, c: float, class_weight: str | None, max_iter: int = 2000):
    """(StandardScaler, LogisticRegression) fitted on ``x``, ``y``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    scaler = StandardScaler().fit(x)
    model = LogisticRegression(C=c, class_weight=class_weight, max_iter=max_iter)
    model.fit(scaler.transform(x), y)
    return scaler, model


def out_of_fold(data: TrainingData, folds, c: float, class_weight: str | None) -> np.ndarray:
    """P(important) for every mismatch from the fold model that did not see its problem."""
    scores = np.zeros(len(data.y))
    for train, val in folds:
        if data.y[train].all() or not data.y[train].any():
            scores[val] = float(data.y[train].mean())  # one class only: a constant predictor
            continue
        scaler, model = fit_scaled_lr(data.x[train], data.y[train], c, class_weight)
        scores[val] = model.predict_proba(scaler.transform(data.x[val]))[:, 1]
    return scores


def threshold_for_recall(scores: np.ndarray, important: np.ndarray, recall: float) -> dict:
    """The largest threshold t with share(scores >= t among important) >= ``recall``; the judge accepts a
    mismatch when P(important) < t. Returns t, the recall reached and the shares of mismatches accepted."""
    positives = np.sort(scores[important])[::-1]
    if len(positives) == 0:
        return {"threshold": 1.0, "recall": 1.0, "accept_share": 1.0, "unimportant_accepted": 1.0}
    k = min(max(math.ceil(recall * len(positives) - 1e-9), 1), len(positives))
    threshold = float(positives[k - 1])
    accepted = scores < threshold
    negatives = ~important
    return {
        "threshold": threshold,
        "recall": float((scores[important] >= threshold).mean()),
        "accept_share": float(accepted.mean()),
        "unimportant_accepted": float(accepted[negatives].mean()) if negatives.any() else 0.0,
    }


def roc_auc(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, scores)) if 0 < y.sum() < len(y) else float("nan")


def fit_judge(
    data: TrainingData,
    *,
    cs: Sequence[float] = DEFAULT_CS,
    folds: int = 5,
    class_weight: str | None = "balanced",
    recalls: Sequence[float] = RECALLS,
    default_recall: float = 0.95,
    seed: int = 0,
) -> tuple[Judge, dict]:
    """Choose C by grouped cross-validated ROC-AUC, pick thresholds, refit on everything, export.

    Returns the judge (card: metrics, thresholds, C, data counts) and the report the card holds.
    """
    if default_recall not in recalls:
        raise ConfigError(f"default recall {default_recall} must be one of the recalls {tuple(recalls)}")
    if data.y.all() or not data.y.any():
        raise DataError(f"all {len(data.y)} mismatches have the same label; mine more problems first")
    splits = group_folds(data.groups, folds, seed)
    per_c, scores = {}, {}
    for c in cs:
        scores[c] = out_of_fold(data, splits, c, class_weight)
        per_c[c] = roc_auc(data.y, scores[c])
        log.info("C=%g: out-of-fold ROC-AUC %.4f", c, per_c[c])
    best = max(cs, key=lambda c: -1.0 if math.isnan(per_c[c]) else per_c[c])
    if len(cs) > 1 and best in (min(cs), max(cs)):
        log.warning("the best C (%g) is at the edge of the grid %s: widen --C", best, sorted(cs))
    thresholds = {str(r): threshold_for_recall(scores[best], data.y, r) for r in recalls}
    reference = None
    if data.positions is not None:  # what the mismatch's place in the answer alone tells (no hidden states)
        where = TrainingData(np.log1p(data.positions)[:, None], data.y, data.groups, "position")
        reference = roc_auc(data.y, out_of_fold(where, splits, 1.0, class_weight))
    scaler, model = fit_scaled_lr(data.x, data.y, best, class_weight)
    train_scores = model.predict_proba(scaler.transform(data.x))[:, 1]
    report = {
        "C": best,
        "class_weight": class_weight,
        "folds": len(splits),
        "metrics": {
            "roc_auc": per_c[best],
            "roc_auc_per_C": {str(c): per_c[c] for c in cs},
            "train_roc_auc": roc_auc(data.y, train_scores),
            "important_share": float(data.y.mean()),
            "reference_roc_auc_position_only": reference,
        },
        "thresholds": thresholds,
        "default_recall": default_recall,
        "threshold": thresholds[str(default_recall)]["threshold"],
    }
    card = {
        "features": data.features, **data.meta, **report, "data": data.counts(),
        "labels": label_meaning(data.meta.get("task")), "agreement": AGREEMENT_MEANING,
    }  # fmt: skip
    return export_judge(scaler, model, card), report


def export_judge(scaler, model, card: dict) -> Judge:
    """The four arrays of a fitted (StandardScaler, binary LogisticRegression)."""

    def as_tensor(values) -> torch.Tensor:
        return torch.as_tensor(np.asarray(values, dtype=np.float32).reshape(-1))

    return Judge(
        mean=as_tensor(scaler.mean_),
        scale=as_tensor(scaler.scale_),
        weight=as_tensor(model.coef_[0]),
        bias=as_tensor(model.intercept_),
        card=card,
    )
