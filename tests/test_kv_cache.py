"""Cached forwards with rollbacks give the logits of an uncached forward."""

from __future__ import annotations

import torch
from conftest import tiny_llama

from autojudge_eval.stack import LayerStack


def test_cached_forward_after_rollbacks_matches_uncached():
    stack = LayerStack(tiny_llama(3))
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 96, (30,), generator=gen)
    cache = stack.new_cache(64)
    stack.forward(ids[:10], cache)
    stack.forward(torch.randint(0, 96, (6,), generator=gen), cache)  # a rejected window
    cache.crop(10)
    stack.forward(ids[10:14], cache)
    stack.forward(torch.randint(0, 96, (3,), generator=gen), cache)
    cache.crop(14)
    _, logits = stack.forward(ids[14:], cache)
    with torch.no_grad():
        reference = stack.model(ids.view(1, -1)).logits[0, 14:]
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def test_partial_layer_runs_compose():
    """Running layers [0, L) then [L, N) equals running all layers, with per-layer cache lengths."""
    stack = LayerStack(tiny_llama(4))
    ids = torch.randint(0, 96, (12,))
    full_cache, split_cache = stack.new_cache(32), stack.new_cache(32)
    _, full = stack.forward(ids, full_cache)
    lower = stack.run(stack.embed(ids[:8]), split_cache, 0, 2)
    stack.run(lower, split_cache, 2, 4)
    lower = stack.run(stack.embed(ids[8:]), split_cache, 0, 2)
    assert split_cache.lengths == [12, 12, 8, 8]
    _, tail = stack.head(stack.run(lower, split_cache, 2, 4))
    torch.testing.assert_close(tail, full[8:], atol=1e-4, rtol=1e-4)


def test_overflow_is_an_error():
    stack = LayerStack(tiny_llama(5))
    cache = stack.new_cache(4)
    try:
        stack.forward(torch.arange(6), cache)
    except RuntimeError as exc:
        assert "overflow" in str(exc)
    else:
        raise AssertionError("expected an overflow error")
