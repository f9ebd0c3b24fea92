"""Cached forwards with rollbacks give the logits of an uncached forward."""

from __future__ import annotations

import torch
from conftest import tiny_llama

from autojudge_eval.engine.kv_cache import RowCache
from autojudge_eval.engine.stack import LayerStack


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


def test_row_steps_at_different_lengths_match_uncached_forwards():
    """A RowCache batch: rows loaded from batch-1 caches at different lengths, stepped together (one token
    per row per step, a row left idle inside the batch) give each sequence's own uncached logits; a row saved
    back into a batch-1 cache continues there exactly."""
    stack = LayerStack(tiny_llama(5))
    gen = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, 96, (n,), generator=gen) for n in (5, 11, 8)]
    rows = RowCache.for_model(stack.config, 32, rows=4, dtype=stack.dtype)
    for row, seq in ((0, seqs[0]), (2, seqs[1]), (3, seqs[2])):
        base = stack.new_cache(32)
        stack.forward(seq[:-1], base)
        rows.load(row, base, 0, len(seq) - 1)
    rows.lengths[1] = 0  # idle
    steps = [torch.randint(0, 96, (3,), generator=gen) for _ in seqs]
    for t in range(4):
        ids = [int(seqs[0][-1]) if t == 0 else int(steps[0][t - 1]), 0]
        ids += [int(s[-1]) if t == 0 else int(steps[k][t - 1]) for k, s in ((1, seqs[1]), (2, seqs[2]))]
        rows.lengths[1] = 0
        normed, logits, low = stack.step_rows(ids, rows, capture=2)
        for row, k in ((0, 0), (2, 1), (3, 2)):
            full = torch.cat([seqs[k], steps[k][:t]])
            with torch.no_grad():
                want = stack.model(full.view(1, -1), output_hidden_states=True)
            torch.testing.assert_close(logits[row], want.logits[0, -1], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(low[row], want.hidden_states[2][0, -1], atol=1e-4, rtol=1e-4)
    saved = stack.new_cache(32)
    rows.save(2, saved, 0, rows.lengths[2])
    nxt = torch.randint(0, 96, (2,), generator=gen)
    _, logits = stack.forward(nxt, saved)
    full = torch.cat([seqs[1], steps[1], nxt])
    with torch.no_grad():
        want = stack.model(full.view(1, -1)).logits[0, -2:]
    torch.testing.assert_close(logits, want, atol=1e-4, rtol=1e-4)


def test_the_cache_keyword_follows_the_layer_signature():
    """transformers <= 5.19 names the layer's cache `past_key_values`, later ones `cache`; a wrong name is
    swallowed by **kwargs and decoding silently loses its context, so the stack asks the signature."""
    import pytest

    from autojudge_eval.engine.stack import cache_keyword
    from autojudge_eval.errors import ModelLoadError

    class Old(torch.nn.Module):
        def forward(self, hidden_states, attention_mask=None, past_key_values=None, **kwargs):
            return hidden_states

    class New(torch.nn.Module):
        def forward(self, hidden_states, attention_mask=None, cache=None, **kwargs):
            return hidden_states

    class Neither(torch.nn.Module):
        def forward(self, hidden_states, **kwargs):
            return hidden_states

    assert cache_keyword(Old()) == "past_key_values"
    assert cache_keyword(New()) == "cache"
    with pytest.raises(ModelLoadError, match="neither"):
        cache_keyword(Neither())
