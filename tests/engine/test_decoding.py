"""The invariants the project rests on, on tiny random Llama models."""

from __future__ import annotations

import pytest
import torch
from conftest import random_eagle_head, random_prompts, tiny_llama

from autojudge_eval.engine.acceptance import ExactMatch, JudgeAccept, TopK, constant_judge
from autojudge_eval.engine.decoding import StopCriteria, speculative_generate
from autojudge_eval.engine.drafters import Adapter, EarlyExit, FullModel, ModelDrafter, SelfDrafter
from autojudge_eval.engine.eagle import EagleDrafter, EagleModel
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import ConfigError

VOCAB = 96


@pytest.fixture(scope="module")
def target() -> LayerStack:
    return LayerStack(tiny_llama(0))


@pytest.fixture(scope="module")
def near_draft(target) -> LayerStack:
    """The target with its last layer's MLP perturbed: agrees often, not always."""
    model = tiny_llama(0)
    with torch.no_grad():
        model.model.layers[-1].mlp.down_proj.weight.add_(
            0.3 * torch.randn_like(model.model.layers[-1].mlp.down_proj.weight)
        )
    return LayerStack(model)


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    return random_prompts(n, seed, VOCAB)


def greedy(stack, prompt, n=24):
    return speculative_generate(stack, None, prompt, stop=StopCriteria(max_new_tokens=n))


def drafters(target, near_draft):
    yield "model", lambda: ModelDrafter(FullModel(near_draft, VOCAB), "cpu")
    zero = Adapter(torch.zeros(64, 64), torch.zeros(64), exit_layer=2)
    yield "self", lambda: SelfDrafter(EarlyExit(target, zero))
    yield "exit-own-cache", lambda: ModelDrafter(EarlyExit(near_draft, zero), "cpu")


@pytest.mark.parametrize("window", [1, 4, 8])
def test_lossless_equals_target(target, near_draft, window):
    accepted_any = 0
    for prompt in prompts(12):
        reference, _ = greedy(target, prompt)
        for name, make in drafters(target, near_draft):
            out, stats = speculative_generate(
                target, make(), prompt, stop=StopCriteria(max_new_tokens=24), rule=ExactMatch(), window=window
            )
            assert out == reference, (name, prompt, window)
            assert stats.mismatches_accepted == 0
            accepted_any += sum(stats.accepted)
    assert accepted_any > 0  # the near draft agrees sometimes, so acceptance paths ran


def test_all_accepted_path_with_identical_draft(target):
    """A draft equal to the target accepts every window, including the bonus-token bookkeeping."""
    for prompt in prompts(4, seed=1):
        reference, _ = greedy(target, prompt, n=30)
        out, stats = speculative_generate(
            target,
            ModelDrafter(FullModel(target, VOCAB), "cpu"),
            prompt,
            stop=StopCriteria(max_new_tokens=30),
            window=4,
        )
        assert out == reference
        assert all(a == 4 for a in stats.accepted[:-1])
        assert stats.target_calls == 6  # 5 tokens per call, 30 tokens


class Observed:
    """Records (start, rows) of every ``observe`` call before passing it on."""

    def observe(self, start, features):
        self.observed.append((start, len(features)))
        super().observe(start, features)


class ObservedSelf(Observed, SelfDrafter):
    observed: list


class ObservedEagle(Observed, EagleDrafter):
    observed: list


def test_prefill_features_go_only_to_a_drafter_that_reads_them(target):
    """The loop normalises the prefill for an EAGLE head (features of positions 0..T-2), not for a drafter
    that ignores features: that one's first observe is the first verify's, at the pending token."""
    prompt = prompts(1, seed=4)[0] + [1, 2]
    zero = Adapter(torch.zeros(64, 64), torch.zeros(64), exit_layer=2)
    for drafter, reads in (
        (ObservedSelf(EarlyExit(target, zero)), False),
        (ObservedEagle(EagleModel(random_eagle_head(target), target)), True),
    ):
        drafter.observed = []
        assert drafter.reads_features == reads
        out, _ = speculative_generate(target, drafter, prompt, stop=StopCriteria(max_new_tokens=8), window=3)
        assert out == greedy(target, prompt, 8)[0]
        first = (0, len(prompt) - 1) if reads else (len(prompt) - 1, drafter.observed[0][1])
        assert drafter.observed[0] == first


def test_never_accepting_judge_equals_lossless(target, near_draft):
    rule = JudgeAccept(constant_judge(1.0), threshold=0.5)
    for prompt in prompts(6, seed=2):
        for _, make in drafters(target, near_draft):
            lossless, _ = speculative_generate(
                target, make(), prompt, stop=StopCriteria(max_new_tokens=20), window=4
            )
            judged, stats = speculative_generate(
                target, make(), prompt, stop=StopCriteria(max_new_tokens=20), rule=rule, window=4
            )
            assert judged == lossless
            assert stats.mismatches_accepted == 0


def test_always_accepting_judge_follows_the_draft(target, near_draft):
    """Every token but the bonus token of each full window is the draft's own greedy choice."""
    rule = JudgeAccept(constant_judge(0.0), threshold=0.5)
    other = LayerStack(tiny_llama(7))  # disagrees with the target almost everywhere
    for prompt in prompts(5, seed=3):
        window = 4
        out, stats = speculative_generate(
            target,
            ModelDrafter(FullModel(other, VOCAB), "cpu"),
            prompt,
            stop=StopCriteria(max_new_tokens=20),
            rule=rule,
            window=window,
        )
        assert stats.mismatches_accepted > 0
        for i, tok in enumerate(out):
            if (i + 1) % (window + 1) == 0:
                continue  # the target's bonus token
            expected, _ = greedy(other, prompt + out[:i], n=1)
            assert tok == expected[0], (prompt, i)
        # one window as long as the budget: exactly the draft's greedy output
        single, _ = speculative_generate(
            target,
            ModelDrafter(FullModel(other, VOCAB), "cpu"),
            prompt,
            stop=StopCriteria(max_new_tokens=6),
            rule=rule,
            window=6,
        )
        assert single == greedy(other, prompt, n=6)[0]


def test_topk_accepts_more_than_lossless(target, near_draft):
    for prompt in prompts(3, seed=4):
        _, exact = speculative_generate(
            target,
            ModelDrafter(FullModel(near_draft, VOCAB), "cpu"),
            prompt,
            stop=StopCriteria(max_new_tokens=24),
            window=4,
        )
        _, top = speculative_generate(
            target,
            ModelDrafter(FullModel(near_draft, VOCAB), "cpu"),
            prompt,
            stop=StopCriteria(max_new_tokens=24),
            rule=TopK(VOCAB),
            window=4,
        )
        assert top.mismatches_accepted >= 0 and sum(top.accepted) >= sum(exact.accepted)
        assert top.tokens_per_call == pytest.approx(5.0, abs=1.01)  # top-V accepts everything


def test_judge_sees_features_of_the_right_size(target, near_draft):
    seen = []

    def judge(features):
        seen.append(features.shape)
        return 1.0

    speculative_generate(
        target,
        ModelDrafter(FullModel(near_draft, VOCAB), "cpu"),
        [1, 2, 3],
        stop=StopCriteria(max_new_tokens=16),
        rule=JudgeAccept(judge, 0.5, "DD-DT"),
        window=4,
    )
    assert seen and all(s == (128,) for s in seen)
    seen.clear()
    speculative_generate(
        target,
        ModelDrafter(FullModel(near_draft, VOCAB), "cpu"),
        [1, 2, 3],
        stop=StopCriteria(max_new_tokens=16),
        rule=JudgeAccept(judge, 0.5, "DT"),
        window=4,
    )
    assert seen and all(s == (64,) for s in seen)


def test_max_new_tokens_and_eos(target, near_draft):
    for window in (1, 3, 8):
        out, stats = speculative_generate(
            target,
            ModelDrafter(FullModel(near_draft, VOCAB), "cpu"),
            [4, 5],
            stop=StopCriteria(max_new_tokens=7),
            window=window,
        )
        assert len(out) == 7 and stats.stop_reason == "max_new_tokens"
    reference, _ = greedy(target, [4, 5], n=20)
    eos = reference[5]
    first = reference.index(eos)
    out, stats = speculative_generate(
        target,
        ModelDrafter(FullModel(target, VOCAB), "cpu"),
        [4, 5],
        stop=StopCriteria(max_new_tokens=20, eos_ids=(eos,)),
        window=8,
    )
    assert out == reference[:first] and stats.stop_reason == "eos"


def test_stop_strings_cut_at_the_stop(target):
    def decode(tokens):
        return " ".join(f"t{t}" for t in tokens)

    reference, _ = greedy(target, [9, 9, 1], n=20)
    marker = f"t{reference[6]}"
    stop = StopCriteria(max_new_tokens=20, stop_strings=(marker,), decode=decode)
    out, stats = speculative_generate(
        target, ModelDrafter(FullModel(target, VOCAB), "cpu"), [9, 9, 1], stop=stop, window=8
    )
    text = decode(out)
    assert stats.stop_reason == "stop_string"
    assert text.endswith(marker) and text.count(marker) == 1  # nothing past the stop
    assert out == reference[: len(out)]


def test_bad_inputs_raise_clear_errors(target):
    with pytest.raises(ConfigError, match="window"):
        speculative_generate(
            target, ModelDrafter(FullModel(target, VOCAB), "cpu"), [1], stop=StopCriteria(4), window=0
        )
    with pytest.raises(ConfigError, match="empty prompt"):
        speculative_generate(target, None, [], stop=StopCriteria(4))
    with pytest.raises(ConfigError, match="decode"):
        StopCriteria(4, stop_strings=("x",))


def test_draft_with_a_differently_padded_head_still_verifies(target):
    """A draft whose LM head has extra (padding) rows is trimmed to the target's vocabulary."""
    padded = LayerStack(tiny_llama(0, vocab=VOCAB + 32))
    for prompt in prompts(3, seed=5):
        reference, _ = greedy(target, prompt)
        out, _ = speculative_generate(
            target,
            ModelDrafter(FullModel(padded, VOCAB), "cpu"),
            prompt,
            stop=StopCriteria(max_new_tokens=24),
        )
        assert out == reference and max(out) < VOCAB


def test_truncated_draft_head_maps_back_to_vocabulary_ids(target):
    gen = torch.Generator().manual_seed(0)
    order = torch.randperm(VOCAB, generator=gen)
    adapter = Adapter(torch.zeros(64, 64), torch.zeros(64), exit_layer=2, vocab=order)
    full, all_rows, few = (
        EarlyExit(target, adapter),
        EarlyExit(target, adapter, VOCAB),
        EarlyExit(target, adapter, 8),
    )
    normed = torch.randn(20, 64)
    with torch.no_grad():
        assert torch.equal(full.tokens(normed), all_rows.tokens(normed))
        assert set(few.tokens(normed).tolist()) <= set(order[:8].tolist())
    for prompt in prompts(3, seed=6):
        reference, _ = greedy(target, prompt)
        out, _ = speculative_generate(target, SelfDrafter(few), prompt, stop=StopCriteria(max_new_tokens=24))
        assert out == reference


def test_a_stop_string_past_the_budget_is_ignored(target):
    """The all-accepted bonus token can overshoot max_new_tokens; a stop string there must not count."""

    def decode(tokens):
        return " ".join(f"t{t}" for t in tokens)

    reference, _ = greedy(target, [3, 1, 4], n=12)
    marker = f"t{reference[7]}"
    if marker in decode(reference[:7]):
        pytest.skip("marker token repeats earlier in this greedy path")
    stop = StopCriteria(max_new_tokens=7, stop_strings=(marker,), decode=decode)
    out, stats = speculative_generate(
        target, ModelDrafter(FullModel(target, VOCAB), "cpu"), [3, 1, 4], stop=stop, window=8
    )
    assert out == reference[:7] and stats.stop_reason == "max_new_tokens"
