"""Layer-range execution of a transformers decoder-only model over an explicit :class:`KVCache`.

This is the one module that knows the inside of a transformers causal LM (``model.model.embed_tokens``,
``.layers``, ``.norm``, ``.rotary_emb`` and ``lm_head``). Running a range of layers is what lets a
self-draft run the target's first layers and the verifier run only the rest.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import contextmanager

import torch

from autojudge_eval.engine.kv_cache import KVCache, RowCache
from autojudge_eval.errors import ModelLoadError

# Families whose decoder forward is exactly: embed -> layers(mask, rope) -> norm -> lm_head.
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


def cache_keyword(layer: torch.nn.Module) -> str:
    """The name under which ``layer``'s forward takes its KV cache.

    transformers up to 5.19 calls it ``past_key_values``, later releases ``cache``. A wrong name lands in
    ``**kwargs`` and is ignored without a word, so every step would attend to its own tokens only.
    """
    params = inspect.signature(type(layer).forward).parameters
    for name in ("cache", "past_key_values"):
        if name in params:
            return name
    raise ModelLoadError(
        f"{type(layer).__name__}.forward takes neither `cache` nor `past_key_values`: this transformers "
        "version is not supported by the speculative engine"
    )


class LayerStack:
    """A causal LM seen as embed, a list of layers, a final norm and a head; batch size 1."""

    def __init__(self, model: torch.nn.Module) -> None:
        model_type = getattr(model.config, "model_type", "?")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise ModelLoadError(
                f"model type {model_type!r} is not supported by the speculative engine; "
                f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        if getattr(model.config, "use_sliding_window", False):
            raise ModelLoadError("sliding-window attention is not supported by the speculative engine")
        inner = model.model
        self.model = model
        self.config = model.config
        self.embed_tokens = inner.embed_tokens
        self.layers = inner.layers
        self.norm = inner.norm
        self.rotary_emb = inner.rotary_emb
        self.lm_head = model.lm_head
        self.num_layers = len(self.layers)
        self.cache_kw = cache_keyword(self.layers[0])
        self.hidden_size = model.config.hidden_size
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache.for_model(self.config, max_len, dtype=self.dtype, device=self.device)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        """(q,) token ids -> (1, q, H) embeddings."""
        return self.embed_tokens(ids.view(1, -1).to(self.device))

    @torch.inference_mode()
    def run(
        self, hidden: torch.Tensor, cache: KVCache, start: int = 0, end: int | None = None
    ) -> torch.Tensor:
        """Run layers ``[start, end)`` on (1, q, H) ``hidden``; append their keys/values to ``cache``."""
        end = self.num_layers if end is None else end
        past = cache.length(start)
        if any(cache.length(i) != past for i in range(start, end)):
            raise RuntimeError(f"layers {start}..{end - 1} hold different cache lengths: {cache.lengths}")
        q = hidden.shape[1]
        positions = torch.arange(past, past + q, device=self.device).unsqueeze(0)
        rope = self.rotary_emb(hidden, position_ids=positions)
        return self._layers(hidden, cache, start, end, causal_mask(past, q, self.device), rope, positions)

    def _layers(self, hidden, cache, start: int, end: int, mask, rope, positions) -> torch.Tensor:
        """Layers ``[start, end)`` on ``hidden`` with a prepared mask, rotary embedding and positions."""
        for layer in self.layers[start:end]:
            out = layer(
                hidden,
                attention_mask=mask,
                position_embeddings=rope,
                position_ids=positions,
                use_cache=True,
                **{self.cache_kw: cache},
            )
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def head(
        self, hidden: torch.Tensor, weight: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Final norm + LM head: (1, q, H) residual -> ((q, H) normed hidden, (q, V) logits).

        ``weight`` replaces the head's (V, H) matrix, e.g. by a row subset for a cheaper draft head.
        """
        normed = self.norm(hidden)[0]
        if weight is None:
            return normed, self.lm_head(normed)
        return normed, normed @ weight.T

    @torch.inference_mode()
    def step_rows(
        self, ids: Sequence[int], cache: RowCache, capture: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """One token per row, each at its row's own position in ``cache`` (rows ``[0, len(ids))``).

        Returns ((B, H) normed hidden, (B, V) logits, (B, H) residual entering layer ``capture`` or None).
        """
        rows = len(ids)
        hidden = self.embed_tokens(
            torch.tensor(list(ids), dtype=torch.long, device=self.device).view(rows, 1)
        )
        positions, mask = cache.begin_step(rows)
        rope = self.rotary_emb(hidden, position_ids=positions)
        split = self.num_layers if capture is None else capture
        hidden = self._layers(hidden, cache, 0, split, mask, rope, positions)
        low = None if capture is None else hidden[:, 0]
        hidden = self._layers(hidden, cache, split, self.num_layers, mask, rope, positions)
        cache.end_step(rows)
        normed = self.norm(hidden)[:, 0]
        return normed, self.lm_head(normed), low

    @torch.inference_mode()
    def forward(self, ids: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """All layers on (q,) ids: ((q, H) last hidden states, (q, V) logits)."""
        return self.head(self.run(self.embed(ids), cache))


class RowLayout:
    """A second layout of every ``nn.Linear`` weight, used for forwards over a few rows (verify windows).

    ``F.linear(x, W)`` runs MKL's GEMM with a transposed operand; for 4..8 rows that path costs about as much
    per row as a one-row step on this CPU, while ``x @ W_t`` with ``W_t`` stored transposed and contiguous
    costs less (see ``autojudge-eval bench``'s cost curve). While enabled, a forward whose row count is in
    ``[min_rows, max_rows]`` uses ``W_t``; every other (the one-token step, prefills, HF ``generate``'s
    decoding) keeps ``F.linear``, so target-only decoding stays bitwise what it was. The copies double the
    weights' memory. Install once per model; switch with :meth:`enabled`.
    """

    def __init__(self, model: torch.nn.Module, min_rows: int = 4, max_rows: int = 8) -> None:
        self.min_rows, self.max_rows, self.on = min_rows, max_rows, False
        for module in model.modules():
            if isinstance(module, torch.nn.Linear) and "forward" not in vars(module):
                module.forward = self._forward(module)

    def _forward(self, module: torch.nn.Linear):
        weight_t = module.weight.detach().T.contiguous()
        linear = torch.nn.functional.linear

        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.on and x.dim() >= 2 and self.min_rows <= x.shape[-2] <= self.max_rows:
                y = x @ weight_t
                return y if module.bias is None else y + module.bias
            return linear(x, module.weight, module.bias)

        return forward

    @contextmanager
    def enabled(self, on: bool = True):
        before, self.on = self.on, on
        try:
            yield self
        finally:
            self.on = before


def causal_mask(past: int, q: int, device) -> torch.Tensor | None:
    """Boolean (1, 1, q, past + q) mask, True where query i may attend key j (j <= past + i).

    One query needs no mask. Several need one even with ``is_causal``: SDPA aligns that flag to the top left,
    which is wrong when a cache precedes the queries.
    """
    if q == 1:
        return None
    keys = torch.arange(past + q, device=device)
    queries = torch.arange(past, past + q, device=device).unsqueeze(1)
    return (keys <= queries).view(1, 1, q, past + q)
