"""Fitting the self-draft adapter: ridge algebra, data collection, splits and the adapter file."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from autojudge_eval.engine.drafters import Adapter, EarlyExit
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import JudgeArtifactError
from autojudge_eval.models.selfdraft import (
    collect_states,
    fit_adapters,
    fit_ridge,
    split_by_problem,
    token_order,
)


def test_ridge_recovers_a_linear_map():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 16, generator=gen)
    weight, bias = torch.randn(16, 16, generator=gen) * 0.3, torch.randn(16, generator=gen)
    y = x + x @ weight.T + bias
    w_hat, b_hat = fit_ridge(x, y, ridge=1e-8)
    torch.testing.assert_close(w_hat, weight, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(b_hat, bias, atol=1e-3, rtol=1e-3)


@pytest.fixture(scope="module")
def fitted():
    stack = LayerStack(tiny_llama(2))
    gen = torch.Generator().manual_seed(1)
    rows = [
        {
            "id": f"p{i}",
            "prompt": torch.randint(0, 96, (5,), generator=gen).tolist(),
            "answer": torch.randint(0, 96, (30,), generator=gen).tolist(),
        }
        for i in range(10)
    ]
    data = collect_states(stack, rows, [1, 2, 3])
    return stack, rows, data


def test_collect_states_keeps_answer_positions(fitted):
    stack, rows, data = fitted
    assert set(data.states) == {1, 2, 3}
    assert data.final.shape == (10 * 30, 64) and data.states[2].shape == (300, 64)
    # the last layer's residual, normed and through the head, is the target's own prediction
    _, logits = stack.head(data.final[:30].unsqueeze(0))
    assert logits.shape == (30, 96)
    assert torch.equal(data.next_token[:30], torch.tensor(rows[0]["answer"]))


def test_split_by_problem_never_splits_a_problem(fitted):
    _, _, data = fitted
    train, test = split_by_problem(data, heldout=0.3)
    assert not set(data.group[train].tolist()) & set(data.group[test].tolist())
    assert train.sum() + test.sum() == len(data.group)


def test_fit_adapters_reports_agreement_per_layer(fitted):
    stack, rows, data = fitted
    results = fit_adapters(stack, data, rows, ridges=[0.01, 0.1], heldout=0.3, head_sizes=[8])
    assert [r["layer"] for r in results] == [1, 2, 3]
    for r in results:
        assert 0.0 <= r["raw_agreement"] <= 1.0 and 0.0 <= r["agreement"] <= 1.0
        assert r["weight"].shape == (64, 64) and set(r["head_agreement"]) == {8}


def test_token_order_puts_frequent_tokens_first():
    order = token_order([{"answer": [5, 5, 5, 7, 7, 1]}], 10)
    assert order[:3].tolist() == [5, 7, 1] and sorted(order.tolist()) == list(range(10))


def test_adapter_round_trip_and_bad_files(tmp_path):
    adapter = Adapter(torch.randn(64, 64), torch.randn(64), exit_layer=2, vocab=torch.arange(96))
    adapter.save(tmp_path / "a.safetensors", {"target": "tiny"})
    loaded = Adapter.load(tmp_path / "a.safetensors")
    assert torch.equal(loaded.weight, adapter.weight) and loaded.exit_layer == 2
    assert loaded.card["target"] == "tiny" and torch.equal(loaded.vocab, adapter.vocab)
    (tmp_path / "b.safetensors").write_bytes(b"not a safetensors file")
    (tmp_path / "b.json").write_text('{"format": "autojudge-selfdraft/1", "exit_layer": 2}')
    with pytest.raises(JudgeArtifactError, match="corrupt"):
        Adapter.load(tmp_path / "b.safetensors")
    with pytest.raises(JudgeArtifactError, match="needs"):
        Adapter.load(tmp_path / "missing.safetensors")
    with pytest.raises(JudgeArtifactError, match="hidden size"):
        EarlyExit(LayerStack(tiny_llama(0, hidden=32)), adapter)
