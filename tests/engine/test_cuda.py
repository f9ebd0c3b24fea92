"""The CUDA path of the engine on tiny random models: ``tox -e gpu`` runs these where a GPU exists.

They skip on machines without CUDA (these CPU boxes and CI); the CPU suite checks the same invariants.
"""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from autojudge_eval.engine.acceptance import ExactMatch, JudgeAccept, constant_judge
from autojudge_eval.engine.decoding import StopCriteria, speculative_generate
from autojudge_eval.engine.drafters import Adapter, EarlyExit, FullModel, ModelDrafter, SelfDrafter
from autojudge_eval.engine.stack import LayerStack

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
VOCAB = 96


@pytest.fixture(scope="module")
def stacks():
    target = tiny_llama(0).to("cuda")
    near = tiny_llama(0)
    with torch.no_grad():
        w = near.model.layers[-1].mlp.down_proj.weight
        w.add_(0.3 * torch.randn_like(w))
    return LayerStack(target), LayerStack(near.to("cuda"))


def _prompts(n: int) -> list[list[int]]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randint(0, VOCAB, (6,), generator=gen).tolist() for _ in range(n)]


@pytest.mark.parametrize("window", [1, 4])
def test_lossless_equals_target_on_cuda(stacks, window):
    target, near = stacks
    zero = Adapter(torch.zeros(64, 64, device="cuda"), torch.zeros(64, device="cuda"), exit_layer=2)
    accepted = 0
    for prompt in _prompts(6):
        reference, _ = speculative_generate(target, None, prompt, stop=StopCriteria(max_new_tokens=20))
        for drafter in (ModelDrafter(FullModel(near, VOCAB), "cuda"), SelfDrafter(EarlyExit(target, zero))):
            out, stats = speculative_generate(
                target,
                drafter,
                prompt,
                stop=StopCriteria(max_new_tokens=20),
                rule=ExactMatch(),
                window=window,
            )
            assert out == reference
            accepted += sum(stats.accepted)
    assert accepted > 0  # the near draft was accepted at least sometimes: the check had something to check


def test_accept_all_takes_every_draft_token_on_cuda(stacks):
    target, near = stacks
    rule = JudgeAccept(constant_judge(0.0), 0.5, "DT")
    out, stats = speculative_generate(
        target, ModelDrafter(FullModel(near, VOCAB), "cuda"), _prompts(1)[0],
        stop=StopCriteria(max_new_tokens=20), rule=rule, window=4,
    )  # fmt: skip
    assert len(out) == 20 and stats.tokens_per_call > 4.0  # K accepted + the target's token, every cycle
