"""The prompt-lookup drafter: the index, lossless equality through it, judges, specs and loading."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama
from tiny_models import tiny_pair_dirs  # noqa: F401 (a session fixture)

from autojudge_eval.config import parse_model_spec
from autojudge_eval.engine.acceptance import ExactMatch, JudgeAccept, TopK, constant_judge
from autojudge_eval.engine.decoding import StopCriteria, speculative_generate
from autojudge_eval.engine.ngram import NgramDrafter, NgramIndex
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import ConfigError, JudgeArtifactError

VOCAB = 96


@pytest.fixture(scope="module")
def target() -> LayerStack:
    return LayerStack(tiny_llama(0))


def repeating_prompts(n: int, seed: int = 0) -> list[list[int]]:
    """Random segments repeated two or three times (text a lookup can match)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        seg = torch.randint(0, VOCAB, (int(torch.randint(2, 7, (1,), generator=gen)),), generator=gen)
        out.append(seg.tolist() * (2 + i % 2))
    return out


def naive_lookup(text: list[int], k: int, n_max: int, n_min: int) -> list[int]:
    """The same rule, by brute force: the most recent earlier occurrence of the longest matching suffix."""
    for n in range(min(n_max, len(text) - 1), n_min - 1, -1):
        tail = text[len(text) - n :]
        for start in range(len(text) - n - 1, -1, -1):
            if text[start : start + n] == tail:
                return text[start + n : start + n + k]
    return []


def test_index_proposes_what_followed_the_most_recent_longest_match():
    index = NgramIndex(n_max=3, n_min=1)
    index.reset([1, 2, 5, 1, 2, 7, 1, 2])
    assert index.propose(3) == [7, 1, 2]  # (1, 2) last followed by 7, not 5
    index.reset([4, 9, 1, 2, 3, 8, 2, 3, 1, 2, 3])
    assert index.propose(2) == [8, 2]  # (1, 2, 3) beats the more recent (2, 3)
    index.reset([1, 2, 3])
    assert index.propose(4) == []  # nothing repeats
    index.reset([6, 6, 6])
    assert index.propose(4) == [6]  # the overlapping match stops at the text's end
    strict = NgramIndex(n_max=3, n_min=2)
    strict.reset([5, 1, 7, 1])
    assert strict.propose(2) == []  # only a 1-gram matches
    with pytest.raises(ConfigError, match="n_min <= n_max"):
        NgramIndex(n_max=1, n_min=2)


def test_incremental_index_equals_brute_force():
    gen = torch.Generator().manual_seed(5)
    text = torch.randint(0, 6, (80,), generator=gen).tolist()
    for n_max, n_min in ((3, 1), (4, 2), (1, 1)):
        index = NgramIndex(n_max, n_min)
        for cut in range(1, len(text)):
            if cut % 7 == 0:
                index.reset(text[:cut])
            else:
                index.extend(text[len(index.tokens) : cut])
            assert index.propose(4) == naive_lookup(text[:cut], 4, n_max, n_min), (n_max, n_min, cut)
        preds = NgramIndex(n_max, n_min).predictions(text, 10)
        for i, pred in enumerate(preds, start=10):
            first = naive_lookup(text[:i], 1, n_max, n_min)
            assert pred == (first[0] if first else text[i])


def greedy(stack, prompt, n):
    return speculative_generate(stack, None, prompt, stop=StopCriteria(max_new_tokens=n))[0]


@pytest.mark.parametrize("window", [1, 3, 5])
def test_lossless_through_ngram_equals_target(target, window):
    full_windows = empty_cycles = accepted = 0
    for prompt in repeating_prompts(10):
        reference = greedy(target, prompt, 30)
        out, stats = speculative_generate(
            target,
            NgramDrafter(),
            prompt,
            stop=StopCriteria(max_new_tokens=30),
            rule=ExactMatch(),
            window=window,
        )
        assert out == reference, (prompt, window)
        assert stats.mismatches_accepted == 0
        assert len(stats.proposed) == stats.cycles == stats.target_calls
        full_windows += sum(a == p == window for a, p in zip(stats.accepted, stats.proposed, strict=True))
        empty_cycles += stats.proposed.count(0)
        accepted += sum(stats.accepted)
    assert accepted > 0 and full_windows > 0 and empty_cycles > 0  # every path of the loop ran


def test_a_prompt_with_repeats_gets_accepted_tokens(target):
    prompt = repeating_prompts(1, seed=3)[0] * 2
    _, stats = speculative_generate(target, NgramDrafter(), prompt, stop=StopCriteria(max_new_tokens=24))
    assert sum(stats.accepted) > 0
    assert stats.tokens_per_call > 1.0


def test_dt_judges_and_topk_work_through_ngram(target):
    accept_all = JudgeAccept(constant_judge(0.0), threshold=0.5, features="DT")
    reject_all = JudgeAccept(constant_judge(1.0), threshold=0.5, features="DT")
    taken = 0
    for prompt in repeating_prompts(6, seed=1):
        stop = StopCriteria(max_new_tokens=24)
        lossless, _ = speculative_generate(target, NgramDrafter(), prompt, stop=stop)
        rejected, _ = speculative_generate(target, NgramDrafter(), prompt, stop=stop, rule=reject_all)
        assert rejected == lossless
        loose, stats = speculative_generate(target, NgramDrafter(), prompt, stop=stop, rule=accept_all)
        wide, _ = speculative_generate(target, NgramDrafter(), prompt, stop=stop, rule=TopK(VOCAB))
        assert wide == loose  # top-|V| accepts every mismatch, as accept-all does
        assert stats.accepted == stats.proposed  # accept-all keeps every proposed token
        taken += stats.mismatches_accepted
    assert taken > 0


def test_a_dd_judge_is_refused(target):
    rule = JudgeAccept(constant_judge(0.0), threshold=0.5, features="DD-DT")
    with pytest.raises(ConfigError, match="DD-DT.*proposes none"):
        speculative_generate(
            target, NgramDrafter(), [1, 2, 1, 2], stop=StopCriteria(max_new_tokens=4), rule=rule
        )
    with pytest.raises(ConfigError, match="no draft hidden states"):
        NgramDrafter().propose(torch.tensor([1, 2, 1]), 2, with_hidden=True)


def test_ngram_specs():
    assert parse_model_spec("ngram", allow_self=True).describe() == "ngram"
    spec = parse_model_spec("ngram:n_max=4,n_min=2", allow_self=True)
    assert (spec.kind, spec.n_max, spec.n_min) == ("ngram", 4, 2)
    assert spec.describe() == "ngram:n_max=4,n_min=2"
    assert parse_model_spec("ngram:n_max=4;n_min=2", allow_self=True) == spec
    for bad, message in (
        ("ngram:n=3", "unknown keys"),
        ("ngram:n_max=2,n_min=3", "above n_max"),
        ("ngram:n_max=0", ">= 1"),
        ("ngram:n_max", "key=value"),
    ):
        with pytest.raises(ConfigError, match=message):
            parse_model_spec(bad, allow_self=True)
    with pytest.raises(ConfigError, match="only valid as a draft"):
        parse_model_spec("ngram")


def test_load_pair_with_ngram_and_judges(tiny_pair_dirs, tmp_path):  # noqa: F811
    from autojudge_eval.config import DecodeConfig
    from autojudge_eval.judging.artifact import Judge, check_pair
    from autojudge_eval.models.pair import load_pair

    target_dir, _ = tiny_pair_dirs
    pair = load_pair(str(target_dir), "ngram:n_max=2", device="cpu")
    assert pair.name.endswith("|ngram:n_max=2,n_min=1") and pair.draft_hidden_size == 0
    prompt = [7, 8, 9, 7, 8, 9, 7, 8]
    expected, _ = pair.generate(prompt, DecodeConfig(mode="target", max_new_tokens=16))
    got, _ = pair.generate(prompt, DecodeConfig(mode="lossless", max_new_tokens=16))
    assert got == expected
    card = {"features": "DD-DT", "target_hidden_size": 64, "draft_hidden_size": 64, "pair": pair.name}
    dd = Judge(torch.zeros(128), torch.ones(128), torch.zeros(128), torch.tensor([0.0]), card=card)
    with pytest.raises(JudgeArtifactError, match="proposes none"):
        check_pair(dd, pair)
    dt_card = card | {"features": "DT"}
    check_pair(
        Judge(torch.zeros(64), torch.ones(64), torch.zeros(64), torch.tensor([0.0]), card=dt_card), pair
    )


def test_row_layout_keeps_other_shapes_bitwise_and_lossless_exact():
    from autojudge_eval.engine.stack import RowLayout

    stack = LayerStack(tiny_llama(0))
    ids = torch.tensor([3, 9, 4, 1, 7, 7, 2, 5])

    def logits(q: int, on: bool, layout=None):
        cache = stack.new_cache(32)
        if layout is None:
            return stack.forward(ids[:q], cache)[1]
        with layout.enabled(on):
            return stack.forward(ids[:q], cache)[1]

    before = {q: logits(q, False) for q in (1, 5, 8)}
    layout = RowLayout(stack.model, min_rows=4, max_rows=6)
    assert torch.equal(logits(1, True, layout), before[1])  # one row: F.linear, as before
    assert torch.equal(logits(8, True, layout), before[8])  # above max_rows: F.linear
    assert torch.equal(logits(5, False, layout), before[5])  # switched off
    torch.testing.assert_close(logits(5, True, layout), before[5], atol=1e-4, rtol=1e-4)
    assert not layout.on  # the switch is restored after each block
    for prompt in repeating_prompts(6, seed=4):
        reference = greedy(stack, prompt, 24)
        with layout.enabled():
            out, _ = speculative_generate(stack, NgramDrafter(), prompt, stop=StopCriteria(24), window=4)
        assert out == reference
