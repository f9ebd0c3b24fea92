"""Judge artifacts: four arrays + a card, equal to sklearn's model, and a loader that refuses what does not fit."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autojudge_eval.engine.acceptance import JudgeAccept, Mismatch
from autojudge_eval.errors import JudgeArtifactError
from autojudge_eval.judging.artifact import CARD, WEIGHTS, Judge, load_judge, pair_slug, shipped_judge
from autojudge_eval.judging.training import export_judge, fit_scaled_lr

HD, HT = 6, 10  # draft and target hidden sizes
PAIR = SimpleNamespace(name="tiny|tiny-draft", stack=SimpleNamespace(hidden_size=HT), draft_hidden_size=HD)
CARD_BASE = {
    "pair": PAIR.name,
    "task": "gsm8k",
    "features": "DD-DT",
    "target_hidden_size": HT,
    "draft_hidden_size": HD,
    "threshold": 0.3,
}


@pytest.fixture(scope="module")
def fitted():
    gen = np.random.default_rng(0)
    x = (gen.normal(size=(300, HD + HT)) * gen.uniform(0.1, 5, HD + HT) + gen.normal(size=HD + HT)).astype(
        np.float32
    )
    y = x[:, 0] + 0.5 * x[:, 9] + gen.normal(size=300) > 0.5
    scaler, model = fit_scaled_lr(x, y, 1.0, "balanced")
    return x, scaler, model


def test_round_trip_equals_sklearn(tmp_path, fitted):
    x, scaler, model = fitted
    judge = export_judge(scaler, model, dict(CARD_BASE))
    judge.save(tmp_path)
    loaded = load_judge(tmp_path, PAIR)
    expected = model.predict_proba(scaler.transform(x))[:, 1]
    np.testing.assert_allclose(loaded.predict_proba(torch.from_numpy(x)).numpy(), expected, atol=1e-5)
    assert loaded(torch.from_numpy(x[3])) == pytest.approx(expected[3], abs=1e-5)
    assert loaded.features == "DD-DT" and loaded.threshold == 0.3
    assert load_judge(tmp_path / WEIGHTS).dim == HD + HT  # the .safetensors path works too


def test_judge_plugs_into_the_accept_rule(fitted):
    x, scaler, model = fitted
    judge = export_judge(scaler, model, dict(CARD_BASE))
    row = torch.from_numpy(x[0])
    mismatch = Mismatch(0, 1, 2, torch.zeros(4), draft_hidden=row[:HD], target_hidden=row[HD:])
    assert JudgeAccept(judge, 0.5, "DD-DT")(mismatch) == (judge(row) < 0.5)


def _saved(tmp_path, **card):
    judge = Judge(
        torch.zeros(HD + HT), torch.ones(HD + HT), torch.ones(HD + HT), torch.zeros(1), {**CARD_BASE, **card}
    )
    judge.save(tmp_path)
    return tmp_path


def test_loading_refuses_wrong_sizes(tmp_path):
    folder = _saved(tmp_path)
    bigger = SimpleNamespace(name=PAIR.name, stack=SimpleNamespace(hidden_size=HT + 1), draft_hidden_size=HD)
    with pytest.raises(JudgeArtifactError, match="target hidden size"):
        load_judge(folder, bigger)
    other_draft = SimpleNamespace(name=PAIR.name, stack=PAIR.stack, draft_hidden_size=HD + 2)
    with pytest.raises(JudgeArtifactError, match="draft hidden size"):
        load_judge(folder, other_draft)


def test_loading_refuses_another_pair(tmp_path):
    folder = _saved(tmp_path)
    other = SimpleNamespace(name="big|small", stack=PAIR.stack, draft_hidden_size=HD)
    with pytest.raises(JudgeArtifactError, match="trained for pair"):
        load_judge(folder, other)
    assert load_judge(folder, other, allow_other_pair=True).dim == HD + HT


def test_loading_refuses_a_card_that_disagrees_with_the_weights(tmp_path):
    folder = _saved(tmp_path, target_hidden_size=HT + 3)
    with pytest.raises(JudgeArtifactError, match="holds 16 weights"):
        load_judge(folder)
    card = json.loads((folder / CARD).read_text())
    (folder / CARD).write_text(json.dumps({**card, "format": "something-else"}))
    with pytest.raises(JudgeArtifactError, match="not a judge card"):
        load_judge(folder)


@pytest.mark.parametrize("name", ["judge.pkl", "judge.joblib", "judge.pt"])
def test_loading_refuses_pickles(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(pickle.dumps({"weight": [1.0]}))
    with pytest.raises(JudgeArtifactError, match="refused"):
        load_judge(path)


def test_loading_refuses_a_pickle_renamed_to_safetensors(tmp_path):
    folder = _saved(tmp_path)
    (folder / WEIGHTS).write_bytes(pickle.dumps({"weight": [1.0]}))
    with pytest.raises(JudgeArtifactError, match="safetensors"):
        load_judge(folder)
    (folder / CARD).unlink()
    with pytest.raises(JudgeArtifactError, match="missing"):
        load_judge(folder)
    with pytest.raises(JudgeArtifactError, match="expected a judge folder"):
        load_judge(tmp_path / "nowhere")


def test_shipped_judge_is_found_by_task_and_pair(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(JudgeArtifactError, match=r"no shipped gsm8k judge for pair 'tiny\|tiny-draft'"):
        shipped_judge("gsm8k", PAIR.name)
    folder = _saved(tmp_path / "judges" / "gsm8k" / pair_slug(PAIR.name) / "DD-DT")
    assert shipped_judge("gsm8k", PAIR.name).resolve() == folder.resolve()
    with pytest.raises(
        JudgeArtifactError,
        match=r"no shipped gsm8k judge for pair 'other\|pair' \(shipped for: (.*, )?tiny_tiny-draft\)",
    ):
        shipped_judge("gsm8k", "other|pair")
    with pytest.raises(JudgeArtifactError, match="no shipped judges for task 'mmlu'"):
        shipped_judge("mmlu", PAIR.name)


def test_committed_judges_load_and_sit_in_their_pairs_folder():
    """Every judge in the checkout's judges/ is a valid safetensors + card, filed under its task and pair."""
    root = Path(__file__).resolve().parents[2] / "judges"
    cards = sorted(root.glob("*/*/*/" + CARD))
    assert cards, "the GSM8K judge for the default pair is committed"
    for card in cards:
        judge = load_judge(card.parent)
        task, pair, features = card.parent.relative_to(root).parts
        assert (task, pair, features) == (judge.card["task"], pair_slug(judge.card["pair"]), judge.features)
        assert judge.threshold is not None and judge.card["data"]["problems"] > 0
