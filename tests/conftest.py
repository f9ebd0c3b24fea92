"""Shared fixtures: tiny random Llama-style models built from a config (no download, fixed seeds)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")
# Test modules live in folders that mirror the package (tests/engine/, tests/sandbox/, ...); the helpers
# they share (this file's tiny_llama, tiny_models.py) are imported from here by name.
sys.path.insert(0, str(Path(__file__).resolve().parent))

DATA_DIR = Path(
    os.environ.get("AUTOJUDGE_DATA_DIR") or Path(__file__).resolve().parents[1].parent / "shared" / "data"
).resolve()
if os.environ.get("AUTOJUDGE_DATA_DIR"):
    os.environ["AUTOJUDGE_DATA_DIR"] = str(DATA_DIR)  # tests that run commands in a temp dir need it absolute


def tiny_llama(seed: int = 0, *, layers: int = 4, hidden: int = 64, vocab: int = 96, **overrides):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
        **overrides,
    )
    model = LlamaForCausalLM(config).eval()
    # Random init gives near-uniform logits; sharpen them so greedy paths are stable and varied.
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(8.0)
    return model


def random_prompts(n: int, seed: int = 0, vocab: int = 96) -> list[list[int]]:
    """``n`` prompts of 1 to 11 random token ids below ``vocab`` (the tiny models' vocabulary)."""
    gen = torch.Generator().manual_seed(seed)
    return [
        torch.randint(0, vocab, (int(torch.randint(1, 12, (1,), generator=gen)),), generator=gen).tolist()
        for _ in range(n)
    ]


def random_eagle_head(stack, seed: int = 3, *, fc_bias: bool = False):
    """A one-layer EAGLE head for ``stack`` (a ``LayerStack``), every weight drawn from N(0, 0.2^2)."""
    from autojudge_eval.engine.eagle import EagleHead
    from autojudge_eval.models.eagle import head_config

    torch.manual_seed(seed)
    head = EagleHead(head_config({}, stack), type(stack.layers[0]), fc_bias=fc_bias)
    with torch.no_grad():
        for param in head.parameters():
            param.normal_(0, 0.2)
    return head


@pytest.fixture(autouse=True)
def hub_offline_env_restored():
    """``autojudge-eval`` sets HF_HUB_OFFLINE / HF_DATASETS_OFFLINE for its process when the data is local;
    a test that calls ``main`` must not leave them set (or unset) for the next."""
    names = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    before = {name: os.environ.get(name) for name in names}
    yield
    for name, value in before.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session", autouse=True)
def one_thread():
    """Tiny models run far faster on one thread, above all on a shared, busy machine (tests are not timed)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "gsm8k" / "test.jsonl").is_file():
        pytest.skip(f"shared data not found at {DATA_DIR}; set AUTOJUDGE_DATA_DIR")
    return DATA_DIR
