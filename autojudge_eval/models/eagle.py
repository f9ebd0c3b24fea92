"""EAGLE heads on disk: the public layout (``config.json`` + safetensors), read and written.

A head folder holds what public EAGLE(-1) checkpoints hold, so the same folder loads in vLLM's ``eagle``
speculative method (``--speculative-config '{"method": "eagle", "model": FOLDER, ...}'``):

* ``config.json``: the target's transformers config with ``num_hidden_layers: 1`` (``architectures`` the
  target's, e.g. ``["LlamaForCausalLM"]``; vLLM maps it to its ``EagleLlamaForCausalLM``);
* ``model.safetensors``: ``fc.weight`` (H, 2H) over [token embedding ; target feature], optionally
  ``fc.bias``, and ``layers.0.*`` (a decoder layer without ``input_layernorm``). A ``model.`` prefix is
  accepted; ``embed_tokens.weight`` / ``lm_head.weight`` are ignored (the target's are used, as vLLM does).

This project adds two files vLLM ignores: ``draft_vocab.safetensors`` (``vocab``: token ids, most frequent
first, for an FR-Spec truncated head) and ``autojudge.json`` (the card: target, data, steps, metrics).
Pickled checkpoints (``pytorch_model.bin``) are refused, never unpickled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from autojudge_eval.config import ModelSpec
from autojudge_eval.engine.eagle import LAYER_TENSORS, EagleHead, EagleModel
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import ModelLoadError

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"
VOCAB_FILE = "draft_vocab.safetensors"
CARD_FILE = "autojudge.json"
CARD_FORMAT = "autojudge-eagle/1"
SHARED = ("embed_tokens.weight", "lm_head.weight")  # the target's own tensors are used instead
# config keys that shape the decoder layer; they must match the target's where the engine shares state
LAYER_KEYS = ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim")
CONVERT_HINT = (
    'convert it once, on a machine where you trust the file: python -c "import torch; from safetensors.torch '
    "import save_file; save_file({k: v.contiguous() for k, v in torch.load('pytorch_model.bin', "
    "weights_only=True).items()}, 'model.safetensors')\" (then delete the .bin)"
)


def resolve_folder(spec: ModelSpec) -> Path:
    """The head's local folder: the spec's folder, or a hub snapshot (config, safetensors, card only)."""
    folder = Path(spec.source)
    if folder.is_dir():
        return folder
    from huggingface_hub import snapshot_download

    try:
        local = snapshot_download(
            spec.source,
            revision=spec.revision,
            allow_patterns=["*.json", "*.safetensors", "*.bin", "*.pt", "*.pth"],
        )
    except Exception as exc:  # huggingface_hub raises many kinds; all mean "not reachable or not there"
        raise ModelLoadError(
            f"could not fetch EAGLE head {spec.source!r} from the hub: {str(exc).splitlines()[0]}. "
            "Pass a local folder (config.json + model.safetensors) or a hub id reachable from here"
        ) from exc
    return Path(local)


def read_head_files(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json as a dict, the head's tensors under EAGLE names), with errors that say what to fix."""
    weights = sorted(p for p in folder.glob("*.safetensors") if p.name != VOCAB_FILE)
    if not weights:
        pickles = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth"))
        if pickles:
            raise ModelLoadError(
                f"EAGLE head {folder} holds only pickled weights ({', '.join(pickles)}), which are never "
                f"unpickled here: {CONVERT_HINT}"
            )
        raise ModelLoadError(f"EAGLE head {folder} holds no .safetensors weights (expected {WEIGHTS})")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(f"EAGLE head {folder} has no config.json (the head's transformers config)")
    try:
        config = json.loads((folder / "config.json").read_text())
        tensors: dict[str, torch.Tensor] = {}
        for path in weights:
            tensors |= load_file(str(path))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelLoadError(f"corrupt EAGLE head {folder}: {exc}") from exc
    named = {}
    for name, tensor in tensors.items():
        name = name.removeprefix("model.")
        if name in SHARED:
            continue
        if name == "layers.0.input_layernorm.weight":
            log.warning("%s: layer 0's input_layernorm is not part of an EAGLE head; ignored", folder)
            continue
        named[name] = tensor
    return config, named


def check_config(config: dict, stack: LayerStack, folder: Path) -> None:
    """The head must be a one-layer head of the target's family, hidden size and vocabulary."""
    target = stack.config
    if config.get("model_type", target.model_type) != target.model_type:
        raise ModelLoadError(
            f"EAGLE head {folder} is for a {config.get('model_type')!r} model, the target is "
            f"{target.model_type!r}: it was trained for another target"
        )
    if config.get("num_hidden_layers", 1) != 1:
        raise ModelLoadError(
            f"EAGLE head {folder} has {config['num_hidden_layers']} layers; only one-layer (EAGLE-1) heads load"
        )
    if config.get("add_para_norm"):
        raise ModelLoadError(f"EAGLE head {folder} is a HASS head (add_para_norm), which is not supported")
    for key in ("hidden_size", "vocab_size"):
        mine, theirs = config.get(key), getattr(target, key)
        if mine is not None and mine != theirs:
            raise ModelLoadError(
                f"EAGLE head {folder} has {key} {mine}, the target {theirs}: it was trained for another target"
            )


def head_config(config: dict, stack: LayerStack):
    """The head's transformers config: its config.json over the target's (one layer, the target's attention)."""
    values = stack.config.to_dict() | {k: v for k, v in config.items() if k not in ("architectures",)}
    values["num_hidden_layers"] = 1
    out = type(stack.config).from_dict(values)
    out._attn_implementation = stack.config._attn_implementation
    return out


def load_eagle(spec: ModelSpec, stack: LayerStack, target_name: str) -> EagleModel:
    """Read the head ``spec`` names, check it against the target, bind it to the target's stack."""
    folder = resolve_folder(spec)
    config, tensors = read_head_files(folder)
    check_config(config, stack, folder)
    card = _read_card(folder)
    fitted_for = card.get("target")
    if fitted_for and fitted_for != target_name:
        raise ModelLoadError(
            f"EAGLE head {folder} was trained for target {fitted_for!r}, not {target_name!r}: "
            "train one for this target with `autojudge-eval fit-eagle --target ...`"
        )
    head = EagleHead(head_config(config, stack), type(stack.layers[0]), fc_bias="fc.bias" in tensors)
    expected = {name: tuple(t.shape) for name, t in head.state_dict_eagle().items()}
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ModelLoadError(
            f"EAGLE head {folder} does not have the EAGLE layout: missing {missing or 'nothing'}, "
            f"unexpected {extra[:6] or 'nothing'} (expected fc.weight and layers.0.{{{', '.join(LAYER_TENSORS)}}})"
        )
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise ModelLoadError(
                f"EAGLE head {folder}: {name} is {tuple(tensors[name].shape)}, the target needs {shape}"
            )
    head.load_eagle(tensors)
    vocab = _read_vocab(folder)
    head_vocab = spec.head_vocab if spec.head_vocab is not None else card.get("default_head_vocab")
    return EagleModel(head, stack, vocab, head_vocab)


def _read_card(folder: Path) -> dict:
    path = folder / CARD_FILE
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"corrupt EAGLE card {path}: {exc}") from exc


def _read_vocab(folder: Path) -> torch.Tensor | None:
    path = folder / VOCAB_FILE
    if not path.is_file():
        return None
    try:
        return load_file(str(path))["vocab"].long()
    except (OSError, KeyError, SafetensorError) as exc:
        raise ModelLoadError(f"corrupt draft vocabulary {path}: {exc}") from exc


def save_eagle(
    folder: Path,
    head: EagleHead,
    stack: LayerStack,
    *,
    vocab: torch.Tensor | None,
    card: dict,
    dtype: torch.dtype = torch.float32,
) -> None:
    """Write ``folder`` in the public EAGLE layout (module docstring), weights stored in ``dtype``."""
    folder.mkdir(parents=True, exist_ok=True)
    config = stack.config.to_dict()
    name = str(dtype).replace("torch.", "")
    config |= {"num_hidden_layers": 1, "torch_dtype": name, "dtype": name}
    config["architectures"] = list(getattr(stack.config, "architectures", None) or ["LlamaForCausalLM"])
    config.pop("_attn_implementation_autoset", None)
    (folder / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in head.state_dict_eagle().items()}
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    if vocab is not None:
        save_file({"vocab": vocab.long().contiguous()}, str(folder / VOCAB_FILE))
    full = {"format": CARD_FORMAT, "hidden_size": head.hidden_size, **card}
    (folder / CARD_FILE).write_text(json.dumps(full, indent=2) + "\n")
