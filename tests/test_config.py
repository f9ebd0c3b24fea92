"""One parser for what users write: specs and decode settings, with errors that say what to do."""

from __future__ import annotations

import pytest

from autojudge_eval.config import DecodeConfig, parse_model_spec, resolve_device, resolve_dtype
from autojudge_eval.errors import ConfigError


def test_spec_kinds(tmp_path):
    assert parse_model_spec("default").kind == "default"
    hub = parse_model_spec("HuggingFaceTB/SmolLM2-360M-Instruct")
    assert (hub.kind, hub.source) == ("pretrained", "HuggingFaceTB/SmolLM2-360M-Instruct")
    assert parse_model_spec("org/name@main").revision == "main"
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    assert parse_model_spec(str(folder)).kind == "pretrained"
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert parse_model_spec(str(gguf)).kind == "gguf"


def test_self_draft_specs(tmp_path):
    adapter = tmp_path / "a.safetensors"
    adapter.write_bytes(b"")
    spec = parse_model_spec(f"self:layers=12,adapter={adapter},head=8192", allow_self=True)
    assert (spec.kind, spec.layers, spec.adapter, spec.head_vocab) == ("self", 12, str(adapter), 8192)
    assert parse_model_spec("self:default", allow_self=True).adapter == "default"
    assert parse_model_spec("self:layers=6", allow_self=True).adapter is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "empty model spec"),
        ("not a model", "cannot read model spec"),
        ("/nonexistent/model.gguf", "GGUF file not found"),
        ("a/b/c", "cannot read model spec"),
        ("self:layers=4", "only valid as a draft"),
    ],
)
def test_bad_specs(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_model_spec(text)


@pytest.mark.parametrize(
    "text, message",
    [
        ("self:layers=0", ">= 1"),
        ("self:layers=x", "integer"),
        ("self:depth=3", "unknown keys"),
        ("self:adapter=/nope.safetensors", "not found"),
        ("self:head=100", "needs layers"),
    ],
)
def test_bad_self_specs(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_model_spec(text, allow_self=True)


def test_folder_without_config(tmp_path):
    with pytest.raises(ConfigError, match="config.json"):
        parse_model_spec(str(tmp_path))


def test_decode_config_validation():
    assert DecodeConfig.build(mode="topk", window="8", topk="3", threshold="0.2").window == 8
    with pytest.raises(ConfigError, match="window"):
        DecodeConfig(window=0)
    with pytest.raises(ConfigError, match="window"):
        DecodeConfig.build(window="0")
    with pytest.raises(ConfigError, match="unknown mode"):
        DecodeConfig(mode="fast")
    with pytest.raises(ConfigError, match="threshold"):
        DecodeConfig(threshold=1.5)


def test_device_and_dtype():
    import torch

    assert resolve_dtype("bf16", "cpu") is torch.bfloat16
    assert resolve_dtype("auto", "cpu") is torch.float32
    assert resolve_dtype("auto", "cuda") is torch.bfloat16
    with pytest.raises(ConfigError, match="unknown dtype"):
        resolve_dtype("int3", "cpu")
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        assert resolve_device("auto") == "cpu"
        with pytest.raises(ConfigError, match="no CUDA"):
            resolve_device("cuda")


def test_self_spec_names_are_stable():
    """Judges and mined data record the pair by these names."""
    assert parse_model_spec("self:default", allow_self=True).describe() == "self:default"
    assert parse_model_spec("self:layers=6", allow_self=True).describe() == "self:layers=6"
    assert parse_model_spec("self:layers=6,head=512", allow_self=True).describe() == "self:layers=6,head=512"
