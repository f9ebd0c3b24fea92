"""fit-eagle's stages on a tiny random Llama: batched answers, cached features, resumable training."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_llama

from autojudge_eval.config import parse_model_spec
from autojudge_eval.engine.decoding import StopCriteria, speculative_generate
from autojudge_eval.engine.eagle import EagleDrafter
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.models import eaglefit
from autojudge_eval.models.eagle import load_eagle, save_eagle
from autojudge_eval.models.selfdraft import token_order


@pytest.fixture(scope="module")
def stack() -> LayerStack:
    return LayerStack(tiny_llama(0))


def prompts(n: int) -> list[tuple[str, list[int]]]:
    gen = torch.Generator().manual_seed(7)
    return [(f"train-{i}", torch.randint(3, 96, (5 + i % 4,), generator=gen).tolist()) for i in range(n)]


def test_batched_answers_equal_greedy_and_resume(tmp_path, stack):
    out = tmp_path / "answers.jsonl"
    first = eaglefit.generate_batched(stack, prompts(3), out, eos_ids=(2,), max_new_tokens=12, rows=2)
    assert len(first) == 3
    done = eaglefit.generate_batched(stack, prompts(5), out, eos_ids=(2,), max_new_tokens=12, rows=3)
    assert len(done) == 5 and len(out.read_text().splitlines()) == 5  # the first three were kept
    for pid, prompt in prompts(5):
        want, _ = speculative_generate(
            stack, None, prompt, stop=StopCriteria(max_new_tokens=12, eos_ids=(2,))
        )
        assert done[pid]["answer"] == want, pid


def test_training_lowers_the_loss_and_saves_a_loadable_head(tmp_path, stack):
    answers = eaglefit.generate_batched(
        stack, prompts(6), tmp_path / "a.jsonl", eos_ids=(), max_new_tokens=10, rows=3
    )
    rows = sorted(answers.values(), key=lambda r: r["id"])
    examples = eaglefit.collect_features(stack, rows, tmp_path / "features")
    again = eaglefit.collect_features(stack, rows, tmp_path / "features")  # read back from the cache
    torch.testing.assert_close(examples[0].features, again[0].features)
    order = token_order(rows, 96)
    settings = eaglefit.TrainSettings(steps=6, batch=2, train_vocab=50, save_every=3)
    straight, history = eaglefit.train_head(stack, examples, order, settings, tmp_path / "a.safetensors")
    assert len(history) == 6 and history[-1]["loss"] < history[0]["loss"]
    agreement = eaglefit.eagle_agreement(stack, straight, examples, order, [20])
    assert 0.0 <= agreement["full"] <= 1.0 and agreement["positions"] > 0
    save_eagle(tmp_path / "head", straight, stack, vocab=order, card={"target": "tiny"})
    model = load_eagle(parse_model_spec(f"eagle:{tmp_path / 'head'}", allow_self=True), stack, "tiny")
    prompt = rows[0]["prompt"]
    out, _ = speculative_generate(stack, EagleDrafter(model), prompt, stop=StopCriteria(max_new_tokens=12))
    want, _ = speculative_generate(stack, None, prompt, stop=StopCriteria(max_new_tokens=12))
    assert out == want


def test_resume_from_a_mid_run_checkpoint(tmp_path, stack):
    """Killing a run after a checkpoint and rerunning it gives the head an uninterrupted run gives."""
    answers = eaglefit.generate_batched(
        stack, prompts(4), tmp_path / "a.jsonl", eos_ids=(), max_new_tokens=8, rows=2
    )
    examples = eaglefit.collect_features(stack, list(answers.values()), tmp_path / "features")
    order = token_order(list(answers.values()), 96)
    settings = eaglefit.TrainSettings(steps=4, batch=2, train_vocab=50, save_every=2)
    straight, _ = eaglefit.train_head(stack, examples, order, settings, tmp_path / "s.safetensors")

    class Killed(Exception):
        pass

    ckpt = tmp_path / "k.safetensors"
    real_save = eaglefit._save_checkpoint

    def save_then_die(path, head, opt, params, step, history):
        real_save(path, head, opt, params, step, history)
        if step == 2:
            raise Killed

    eaglefit._save_checkpoint = save_then_die
    try:
        with pytest.raises(Killed):
            eaglefit.train_head(stack, examples, order, settings, ckpt)
    finally:
        eaglefit._save_checkpoint = real_save
    resumed, history = eaglefit.train_head(stack, examples, order, settings, ckpt)
    assert [h["step"] for h in history] == [1, 2, 3, 4]
    torch.testing.assert_close(resumed.fc.weight, straight.fc.weight)


def test_head_card_records_the_fit():
    """The card's fit part: data and held-out counts, answer tokens trained on, the loss over the last 20
    steps, agreements rounded (positions apart) and the compared draft's."""

    def example(pid: str, prompt_len: int, n: int) -> eaglefit.Example:
        return eaglefit.Example(
            pid, torch.zeros(n, dtype=torch.long), torch.zeros(n, 4), torch.zeros(n), prompt_len
        )

    train, held = [example("train-0", 3, 10), example("train-1", 2, 5)], [example("train-2", 4, 6)]
    history = [{"loss": float(i), "reg": 1.0, "cls": 2.0} for i in range(30)]
    agreement = {"full": 0.123456, "20": 0.5, "positions": 7}
    settings = eaglefit.TrainSettings(steps=30)
    card = eaglefit.head_card(
        prompts=4,
        max_new_tokens=64,
        train=train,
        held=held,
        settings=settings,
        history=history,
        agreement=agreement,
        compare=("self:default", 0.33333),
    )
    assert card["data"].startswith("gsm8k train, problems 0..3:") and "up to 64 tokens" in card["data"]
    assert (card["problems"], card["heldout_problems"], card["heldout_positions"]) == (3, 1, 7)
    assert card["train_tokens"] == 7 + 3 and card["steps"] == 30 and card["settings"]["steps"] == 30
    assert card["final_loss"] == {"loss": 19.5, "reg": 1.0, "cls": 2.0}  # steps 10..29
    assert card["heldout_agreement"] == {"full": 0.1235, "20": 0.5}
    assert card["compare"] == {"draft": "self:default", "heldout_agreement": 0.3333}
    bare = eaglefit.head_card(
        prompts=4, max_new_tokens=64, train=[], held=held, settings=settings, history=[], agreement=agreement
    )
    assert bare["final_loss"] == {} and bare["compare"] is None and bare["train_tokens"] == 0
