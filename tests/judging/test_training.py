"""Judge training: grouped splits, thresholds by recall, and the mine -> train -> load path end to end."""

from __future__ import annotations

import argparse
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import tiny_llama

from autojudge_eval.cli.mine import add_train_arguments, train_main
from autojudge_eval.engine.drafters import FullModel, ModelDrafter
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import DataError
from autojudge_eval.judging.artifact import load_judge
from autojudge_eval.judging.training import (
    TrainingData,
    fit_judge,
    group_folds,
    threshold_for_recall,
    training_data,
)
from autojudge_eval.mining.outcomes import CallableOutcome
from autojudge_eval.mining.records import read_mined
from autojudge_eval.mining.search import Miner, MineSettings, Problem, run_mining


def synthetic(n_problems: int = 40, per: int = 12, dim: int = 8, seed: int = 0) -> TrainingData:
    gen = np.random.default_rng(seed)
    x = gen.normal(size=(n_problems * per, dim)).astype(np.float32)
    y = x[:, 0] + 0.3 * gen.normal(size=len(x)) > 0.8
    groups = np.repeat([f"q{i}" for i in range(n_problems)], per)
    return TrainingData(x, y, groups, "DT", {"task": "synthetic", "pair": "a|b"})


def test_folds_never_split_a_problem():
    data = synthetic()
    folds = group_folds(data.groups, 5)
    assert len(folds) == 5
    for train, val in folds:
        assert not set(data.groups[train]) & set(data.groups[val])
    assert sorted(np.concatenate([val for _, val in folds]).tolist()) == list(range(len(data.y)))
    with pytest.raises(DataError, match="at least 2 problems"):
        group_folds(np.array(["only"] * 5), 5)


def test_thresholds_keep_the_recall():
    scores = np.array([0.9, 0.8, 0.7, 0.2, 0.6, 0.1, 0.05, 0.3])
    important = np.array([1, 1, 1, 1, 0, 0, 0, 0], dtype=bool)
    t = threshold_for_recall(scores, important, 0.75)
    assert t["threshold"] == 0.7 and t["recall"] == 0.75
    assert t["accept_share"] == pytest.approx(5 / 8)  # 0.2, 0.6, 0.1, 0.05, 0.3 fall below 0.7
    assert threshold_for_recall(scores, important, 1.0)["threshold"] == 0.2


def test_fit_judge_selects_c_and_orders_thresholds():
    judge, report = fit_judge(synthetic(), cs=(0.01, 1.0), folds=4)
    assert report["metrics"]["roc_auc"] > 0.85
    t = report["thresholds"]
    assert t["0.9"]["threshold"] >= t["0.95"]["threshold"] >= t["0.99"]["threshold"]
    assert t["0.9"]["accept_share"] >= t["0.99"]["accept_share"]
    assert all(t[r]["recall"] >= float(r) for r in t)
    assert judge.threshold == t["0.95"]["threshold"] and judge.card["data"]["problems"] == 40


def test_the_position_only_reference_scores_what_position_tells():
    data = synthetic()
    gen = np.random.default_rng(1)
    data.positions = gen.integers(0, 300, size=len(data.y)).astype(float)  # unrelated to the labels
    _, report = fit_judge(data, cs=(0.1,), folds=4)
    assert abs(report["metrics"]["reference_roc_auc_position_only"] - 0.5) < 0.1
    data.positions = np.where(data.y, gen.integers(0, 100, len(data.y)), gen.integers(80, 300, len(data.y)))
    _, report = fit_judge(data, cs=(0.1,), folds=4)
    assert report["metrics"]["reference_roc_auc_position_only"] > 0.9  # early = important, here by design


def test_mine_then_train_then_load(tmp_path):
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        target, draft = LayerStack(tiny_llama(0)), LayerStack(tiny_llama(1))
        miner = Miner(target, ModelDrafter(FullModel(draft, 96), "cpu"), [5], MineSettings(16))
        task = CallableOutcome(lambda t: t[-1] % 3 if t else -1)
        gen = torch.Generator().manual_seed(5)
        problems = [
            Problem(f"p{i}", tuple(torch.randint(6, 96, (4,), generator=gen).tolist()), task)
            for i in range(8)
        ]
        header = {
            "task": "mod3",
            "pair": "tiny|tiny-draft",
            "target_hidden_size": 64,
            "draft_hidden_size": 64,
            "label_settings": {},
        }
        run_mining(miner, problems, tmp_path / "mined", header, checkpoint_every=3, progress=False)
    finally:
        torch.set_num_threads(before)
    data = training_data(read_mined(tmp_path / "mined"), "DD-DT")
    assert data.x.shape[1] == 128 and 0 < data.y.sum() < len(data.y)
    parser = argparse.ArgumentParser()
    add_train_arguments(parser)
    args = parser.parse_args(
        [str(tmp_path / "mined"), "--C", "0.1,1", "--folds", "3", "--out", str(tmp_path / "judge")]
    )
    assert train_main(args) == 0
    pair = SimpleNamespace(
        name="tiny|tiny-draft", stack=SimpleNamespace(hidden_size=64), draft_hidden_size=64
    )
    judge = load_judge(tmp_path / "judge", pair)
    card = judge.card
    assert card["data"]["sha256"] == data.sha256 and card["task"] == "mod3" and card["command"]
    assert set(card["thresholds"]) == {"0.9", "0.95", "0.99"}
    assert 0.0 <= card["metrics"]["reference_roc_auc_position_only"] <= 1.0
    # a new card says which labels it was trained on and which agreement the reports mean
    assert card["labels"].startswith("mined labels: a mismatch is important") and "'mod3'" in card["labels"]
    assert "documents where the target-only run gave one" in card["agreement"]
    np.testing.assert_allclose(judge.predict_proba(torch.from_numpy(data.x)).shape, (len(data.y),))
