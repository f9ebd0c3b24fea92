"""A draft/target pair ready to decode: the target's layer stack, a drafter, tokenizer and stop ids."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from autojudge_eval.config import DEFAULT_DRAFT, DecodeConfig, ModelSpec, parse_model_spec, resolve_dtype
from autojudge_eval.engine.acceptance import AcceptRule, ExactMatch, TopK
from autojudge_eval.engine.decoding import DecodeStats, StopCriteria, speculative_generate
from autojudge_eval.engine.drafters import (
    DEFAULT_ADAPTER,
    Adapter,
    Drafter,
    EarlyExit,
    FullModel,
    ModelDrafter,
    SelfDrafter,
)
from autojudge_eval.engine.eagle import EagleDrafter
from autojudge_eval.engine.ngram import NgramDrafter
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import ConfigError, ModelLoadError
from autojudge_eval.models.eagle import load_eagle
from autojudge_eval.models.loading import LoadedModel, check_same_vocabulary, eos_token_ids, load_model

log = logging.getLogger(__name__)


@dataclass
class Pair:
    target: LoadedModel
    stack: LayerStack
    drafter: Drafter | None
    draft_name: str
    eos_ids: tuple[int, ...]

    @property
    def tokenizer(self):
        return self.target.tokenizer

    @property
    def name(self) -> str:
        """Identity of the pair, as judges and results record it."""
        return f"{self.target.name}|{self.draft_name}"

    @property
    def draft_hidden_size(self) -> int:
        """Size of the draft hidden states a proposal carries (0 without a drafter or for a lookup)."""
        return self.drafter.hidden_size if self.drafter is not None else 0

    def stop(self, max_new_tokens: int, stop_strings: tuple[str, ...] = ()) -> StopCriteria:
        decode = (lambda ids: self.tokenizer.decode(ids, skip_special_tokens=False)) if stop_strings else None
        return StopCriteria(max_new_tokens, self.eos_ids, tuple(stop_strings), decode)

    def generate(
        self, prompt_ids: list[int], cfg: DecodeConfig, rule: AcceptRule | None = None
    ) -> tuple[list[int], DecodeStats]:
        """Decode one prompt with ``cfg.mode``; ``rule`` overrides the rule the mode implies."""
        drafter = None if cfg.mode == "target" else self.drafter
        if drafter is None and cfg.mode != "target":
            raise ConfigError(f"mode={cfg.mode} needs a draft model; pass draft=... or use mode=target")
        rule = rule or default_rule(cfg)
        return speculative_generate(
            self.stack,
            drafter,
            prompt_ids,
            stop=self.stop(cfg.max_new_tokens, cfg.stop),
            rule=rule,
            window=cfg.window,
        )


def default_rule(cfg: DecodeConfig) -> AcceptRule:
    if cfg.mode == "topk":
        return TopK(cfg.topk)
    if cfg.mode == "autojudge":
        raise ConfigError("mode=autojudge needs a judge: pass judge=PATH (see `autojudge-eval train`)")
    return ExactMatch()


def load_pair(
    target: str | ModelSpec = "default",
    draft: str | ModelSpec | None = None,
    *,
    device: str = "auto",
    dtype: str | torch.dtype | None = None,
    draft_dtype: str | torch.dtype | None = None,
) -> Pair:
    """Load the target and its draft. ``draft`` None picks the default self-draft for the default target.

    ``draft_dtype`` runs the draft in another dtype than the target (a bfloat16 draft reads half the
    bytes); a self-draft then runs on its own copy of the target's weights with its own cache.
    """
    t_spec = target if isinstance(target, ModelSpec) else parse_model_spec(target)
    if draft is None:
        draft = DEFAULT_DRAFT if t_spec.kind == "default" else "none"
    loaded = load_model(t_spec, device=device, dtype=dtype)
    stack = LayerStack(loaded.model)
    pair = Pair(loaded, stack, None, "none", eos_token_ids(loaded))
    if draft == "none":
        return pair
    return with_draft(pair, draft, t_spec, device=device, draft_dtype=draft_dtype)


def with_draft(
    pair: Pair,
    draft: str | ModelSpec,
    target_spec: ModelSpec,
    *,
    device: str = "auto",
    draft_dtype: str | torch.dtype | None = None,
) -> Pair:
    """``pair``'s target (the same loaded weights) with another draft: how a bench compares drafters."""
    loaded, stack, eos = pair.target, pair.stack, pair.eos_ids
    d_spec = draft if isinstance(draft, ModelSpec) else parse_model_spec(draft, allow_self=True)
    if d_spec.kind == "ngram":  # prompt lookup: no draft model, so no draft dtype either
        return Pair(loaded, stack, NgramDrafter(d_spec.n_max, d_spec.n_min), d_spec.describe(), eos)
    if d_spec.kind == "eagle":  # a head on the target's features: it runs in the target's dtype
        drafter = EagleDrafter(load_eagle(d_spec, stack, loaded.name))
        return Pair(loaded, stack, drafter, d_spec.describe(), eos)
    separate = draft_dtype is not None and resolve_dtype(draft_dtype, loaded.device) != loaded.dtype
    suffix = f"@{resolve_dtype(draft_dtype, loaded.device)}".replace("torch.", "") if separate else ""
    if d_spec.kind == "self":
        d_stack = (
            LayerStack(load_model(target_spec, device=device, dtype=draft_dtype).model) if separate else stack
        )
        exit_model = _early_exit(d_stack, loaded, d_spec)
        drafter = ModelDrafter(exit_model, loaded.device) if separate else SelfDrafter(exit_model)
        return Pair(loaded, stack, drafter, d_spec.describe() + suffix, eos)
    d_loaded = load_model(d_spec, device=device, dtype=draft_dtype if separate else loaded.dtype)
    check_same_vocabulary(loaded, d_loaded)
    drafter = ModelDrafter(
        FullModel(LayerStack(d_loaded.model), loaded.model.config.vocab_size), loaded.device
    )
    return Pair(loaded, stack, drafter, d_loaded.name + suffix, eos)


def _early_exit(stack: LayerStack, loaded: LoadedModel, spec: ModelSpec) -> EarlyExit:
    if spec.adapter is None:  # a raw early exit: zero adapter
        size = stack.hidden_size
        return EarlyExit(stack, Adapter(torch.zeros(size, size), torch.zeros(size), spec.layers))
    path = DEFAULT_ADAPTER if spec.adapter == "default" else Path(spec.adapter)
    adapter = Adapter.load(path)
    fitted_for = adapter.card.get("target")
    if fitted_for and fitted_for != loaded.name:
        raise ModelLoadError(
            f"self-draft adapter {path} was fitted for target {fitted_for!r}, not {loaded.name!r}: "
            "fit one for this target with `autojudge-eval fit-draft --target ...`"
        )
    if spec.layers is not None and spec.layers != adapter.exit_layer:
        raise ConfigError(f"adapter {path} was fitted at exit layer {adapter.exit_layer}, not {spec.layers}")
    head = spec.head_vocab if spec.head_vocab is not None else adapter.card.get("default_head_vocab")
    return EarlyExit(stack, adapter, head)
