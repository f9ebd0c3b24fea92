"""The EAGLE drafter on tiny random Llama models: lossless equals target, its cache survives rollbacks,
and heads load from (and only from) the public layout."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import random_eagle_head, random_prompts, tiny_llama

from autojudge_eval.config import parse_model_spec
from autojudge_eval.engine.acceptance import ExactMatch
from autojudge_eval.engine.decoding import StopCriteria, speculative_generate
from autojudge_eval.engine.eagle import EagleDrafter, EagleModel
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import ConfigError, ModelLoadError
from autojudge_eval.models.eagle import load_eagle, save_eagle

VOCAB = 96


@pytest.fixture(scope="module")
def target() -> LayerStack:
    return LayerStack(tiny_llama(0))


def saved(tmp_path, stack, head, *, name="head", card=None, vocab=None):
    folder = tmp_path / name
    save_eagle(folder, head, stack, vocab=vocab, card=card or {})
    return folder


def prompts(n: int, seed: int = 0) -> list[list[int]]:
    return random_prompts(n, seed, VOCAB)


def greedy(stack, prompt, n=24):
    return speculative_generate(stack, None, prompt, stop=StopCriteria(max_new_tokens=n))[0]


class CheckedDrafter(EagleDrafter):
    """An EAGLE drafter that checks each proposal against a fresh drafter fed the same features at once:
    the incremental cache (catch-up rows, rollbacks, rows rewritten from the target's features) must give
    what a from-scratch pass gives."""

    checked = 0

    def propose(self, seq, k, *, with_hidden):
        got = super().propose(seq, k, with_hidden=with_hidden)
        fresh = EagleDrafter(self.model)
        fresh.cache = fresh.features = None
        fresh.reset(self.cache)
        fresh.observe(0, self.features[: len(seq) - 1])
        want = fresh.propose(seq, k, with_hidden=with_hidden)
        assert got.tokens.tolist() == want.tokens.tolist()
        if with_hidden:
            torch.testing.assert_close(got.hidden, want.hidden, atol=1e-5, rtol=1e-4)
        CheckedDrafter.checked += 1
        return got


@pytest.mark.parametrize("window", [1, 4, 8])
def test_lossless_through_a_saved_head_equals_target(tmp_path, target, window):
    folder = saved(tmp_path, target, random_eagle_head(target))
    model = load_eagle(parse_model_spec(f"eagle:{folder}", allow_self=True), target, "tiny")
    for prompt in prompts(10):
        out, stats = speculative_generate(
            target,
            EagleDrafter(model),
            prompt,
            stop=StopCriteria(max_new_tokens=24),
            rule=ExactMatch(),
            window=window,
        )
        assert out == greedy(target, prompt), (prompt, window)
        assert stats.draft_calls > 0


def test_cache_after_rollbacks_matches_a_fresh_pass(tmp_path, target):
    model = EagleModel(random_eagle_head(target, seed=5), target)
    CheckedDrafter.checked = 0
    for prompt in prompts(6, seed=2):
        out, _ = speculative_generate(
            target, CheckedDrafter(model), prompt, stop=StopCriteria(max_new_tokens=20), window=3
        )
        assert out == greedy(target, prompt, 20)
    assert CheckedDrafter.checked > 20


def bigram_pair(tmp_path):
    """A one-layer target whose next token depends on the current token only (its attention and MLP write
    nothing), and a head that predicts exactly that: every draft is accepted."""
    model = tiny_llama(1, layers=1)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
        model.model.layers[0].mlp.down_proj.weight.zero_()
    stack = LayerStack(model)
    head = random_eagle_head(stack, fc_bias=True)
    hidden = stack.hidden_size
    with torch.no_grad():
        head.fc.weight.copy_(torch.cat([torch.eye(hidden), torch.zeros(hidden, hidden)], dim=1))
        head.fc.bias.zero_()
        head.layer.self_attn.o_proj.weight.zero_()
        head.layer.mlp.down_proj.weight.zero_()
    return stack, saved(tmp_path, stack, head, name="bigram")


def test_all_accepted_with_an_exact_head(tmp_path):
    stack, folder = bigram_pair(tmp_path)
    model = load_eagle(parse_model_spec(f"eagle:{folder}", allow_self=True), stack, "tiny")
    assert model.head.fc.bias is not None
    for prompt in prompts(4, seed=1):
        prompt = [5, *prompt]  # a one-token prompt has no feature yet: its first cycle drafts nothing
        out, stats = speculative_generate(
            stack, EagleDrafter(model), prompt, stop=StopCriteria(max_new_tokens=30), window=4
        )
        assert out == greedy(stack, prompt, 30)
        assert all(a == 4 for a in stats.accepted[:-1]), stats.accepted


def test_draft_hidden_states_for_dd_judges(tmp_path, target):
    drafter = EagleDrafter(EagleModel(random_eagle_head(target), target))
    cache = target.new_cache(64)
    seq = torch.tensor(prompts(1, seed=4)[0] + [1, 2], dtype=torch.long)
    drafter.reset(cache)
    drafter.observe(0, target.norm(target.run(target.embed(seq[:-1]), cache))[0])
    proposal = drafter.propose(seq, 4, with_hidden=True)
    assert proposal.tokens.shape == (4,) and proposal.hidden.shape == (4, target.hidden_size)


def test_truncated_head_keeps_only_listed_tokens(tmp_path, target):
    order = torch.randperm(VOCAB, generator=torch.Generator().manual_seed(0))
    folder = saved(tmp_path, target, random_eagle_head(target), vocab=order, card={"default_head_vocab": 10})
    model = load_eagle(parse_model_spec(f"eagle:{folder}", allow_self=True), target, "tiny")
    assert model.rows.tolist() == order[:10].tolist()
    prompt = prompts(1)[0]
    out, stats = speculative_generate(
        target, EagleDrafter(model), prompt, stop=StopCriteria(max_new_tokens=16), window=4
    )
    assert out == greedy(target, prompt, 16)
    wider = load_eagle(parse_model_spec(f"eagle:{folder},head=20", allow_self=True), target, "tiny")
    assert len(wider.rows) == 20


def test_public_layout_names_and_prefix(tmp_path, target):
    """config.json + model.safetensors with fc.weight and layers.0.*; a ``model.`` prefix loads too."""
    from safetensors.torch import load_file, save_file

    folder = saved(tmp_path, target, random_eagle_head(target))
    config = json.loads((folder / "config.json").read_text())
    assert config["num_hidden_layers"] == 1 and config["architectures"] == ["LlamaForCausalLM"]
    names = set(load_file(str(folder / "model.safetensors")))
    assert "fc.weight" in names and "layers.0.self_attn.q_proj.weight" in names
    assert not any("input_layernorm" in n or "embed_tokens" in n or "lm_head" in n for n in names)
    prefixed = tmp_path / "prefixed"
    prefixed.mkdir()
    (prefixed / "config.json").write_text((folder / "config.json").read_text())
    tensors = {f"model.{k}": v for k, v in load_file(str(folder / "model.safetensors")).items()}
    tensors["model.embed_tokens.weight"] = target.embed_tokens.weight.detach().clone()
    save_file(tensors, str(prefixed / "model.safetensors"))
    a = load_eagle(parse_model_spec(f"eagle:{folder}", allow_self=True), target, "tiny")
    b = load_eagle(parse_model_spec(f"eagle:{prefixed}", allow_self=True), target, "tiny")
    torch.testing.assert_close(a.head.fc.weight, b.head.fc.weight)


def test_pickle_is_refused_with_the_conversion(tmp_path, target):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not unpickled")
    with pytest.raises(ModelLoadError, match="never unpickled.*safetensors"):
        load_eagle(parse_model_spec(f"eagle:{folder}", allow_self=True), target, "tiny")


def test_clear_errors(tmp_path, target):
    folder = saved(tmp_path, target, random_eagle_head(target), card={"target": "another-model"})
    spec = parse_model_spec(f"eagle:{folder}", allow_self=True)
    with pytest.raises(ModelLoadError, match="trained for target 'another-model'"):
        load_eagle(spec, target, "tiny")
    (folder / "autojudge.json").unlink()
    wide = LayerStack(tiny_llama(0, hidden=32))
    with pytest.raises(ModelLoadError, match="hidden_size 64, the target 32"):
        load_eagle(spec, wide, "tiny")
    (folder / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load_eagle(spec, target, "tiny")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ModelLoadError, match="no .safetensors"):
        load_eagle(parse_model_spec(f"eagle:{empty}", allow_self=True), target, "tiny")


def test_spec_parsing(tmp_path):
    spec = parse_model_spec(f"eagle:{tmp_path},head=4096", allow_self=True)
    assert (spec.kind, spec.source, spec.head_vocab) == ("eagle", str(tmp_path), 4096)
    assert spec.describe() == f"eagle:{tmp_path},head=4096"
    hub = parse_model_spec("eagle:org/head@v1;head=8", allow_self=True)
    assert (hub.source, hub.revision, hub.head_vocab) == ("org/head", "v1", 8)
    with pytest.raises(ConfigError, match="only valid as a draft"):
        parse_model_spec(f"eagle:{tmp_path}")
    with pytest.raises(ConfigError, match="EAGLE head not found"):
        parse_model_spec("eagle:./no/such/folder", allow_self=True)
    with pytest.raises(ConfigError, match="needs a head"):
        parse_model_spec("eagle", allow_self=True)
