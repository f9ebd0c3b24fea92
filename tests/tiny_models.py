"""A tiny target/draft pair saved as transformers folders, with a word-level tokenizer and a chat template.

``build_tiny_pair(root)`` writes ``root/target`` and ``root/draft`` (random Llama weights from conftest's
``tiny_llama``; the draft is the target with its last MLP perturbed, so it agrees often but not always) and
reuses them when present. ``tiny_pair_dirs`` is the same as a session fixture: import it into a test module.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_llama

SPECIALS = ["<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
WORDS = (
    "the a an is are of and to in on it what how many much has have had more less than left total "
    "Question Answer answer final Tom Ann Sam apples pens cats books gives buys eats sells each "
    "0 1 2 3 4 5 6 7 8 9 10 12 + - * = ? . , : ! yes no"
).split()
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
VERSION = "1"  # bump when the folders' content changes


def tiny_tokenizer():
    """A word-level fast tokenizer: whitespace/punctuation split, space-joined decode, eos ``</s>``."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIALS + WORDS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIALS])
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="</s>", unk_token="<unk>")
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_tiny_pair(root: Path) -> tuple[Path, Path]:
    """Write (or reuse) ``root/target`` and ``root/draft``; return both folders."""
    target_dir, draft_dir = root / "target", root / "draft"
    stamp = root / f"built-v{VERSION}"
    if stamp.is_file():
        return target_dir, draft_dir
    tok = tiny_tokenizer()
    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.eos_token_id,
    }
    target = tiny_llama(0, vocab=len(tok), **ids)
    draft = tiny_llama(0, vocab=len(tok), **ids)
    with torch.no_grad():
        weight = draft.model.layers[-1].mlp.down_proj.weight
        weight.add_(0.3 * torch.randn(weight.shape, generator=torch.Generator().manual_seed(1)))
    for model, folder in ((target, target_dir), (draft, draft_dir)):
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
    stamp.write_text("ok\n")
    return target_dir, draft_dir


@pytest.fixture(scope="session")
def tiny_pair_dirs(tmp_path_factory) -> tuple[Path, Path]:
    return build_tiny_pair(tmp_path_factory.mktemp("tiny_pair"))


def save_lenient_judge(folder: Path, target: Path, draft: Path, threshold: float | None = None) -> Path:
    """A DT judge for the tiny pair that calls every mismatch unimportant (P(important) = sigmoid(-5))."""
    from autojudge_eval.judging.artifact import Judge

    card = {"features": "DT", "target_hidden_size": 64, "draft_hidden_size": 64, "pair": f"{target}|{draft}"}
    if threshold is not None:
        card["threshold"] = threshold
    Judge(torch.zeros(64), torch.ones(64), torch.zeros(64), torch.tensor([-5.0]), card=card).save(folder)
    return Path(folder)
