"""EAGLE drafting: a one-layer head that extrapolates the target's features, with its own small KV cache.

The head (Li et al., 2024, "EAGLE") reads, at position t, the pair [embedding of token t+1 ; the target's
feature f_t] through a linear map ``fc`` (2H -> H), runs one decoder layer of the target's own architecture
(its input norm removed, as in EAGLE and vLLM's ``llama_eagle``) and predicts f_{t+1}. A token comes from the
target's LM head applied to that prediction, optionally restricted to the most frequent tokens (FR-Spec).

Which feature: f_t is the target's *last hidden state after its final norm* (what the LM head reads, and what
a transformers/vLLM Llama model returns). So the head's prediction goes to the shared LM head directly; the
target's final norm is already inside the feature it learns to predict. Embedding and LM head are the
target's own tensors, never copies.

Drafting K tokens: the head first catches up on the committed text (one row per position whose target
feature it has not read yet, all in one forward), which gives its prediction of the pending token's feature
and so d_1; then each further step reads (its own predicted feature, the last draft token). Rows it wrote
from its own predictions are forgotten at the next proposal: they are rewritten from the target's features.

Cache convention: the head's cache row t holds the pair (f_t, token t+1). With the committed text x_0..x_{T-1}
(the target's cache holding T-1 positions), features f_0..f_{T-2} are known and so are T-1 pairs.
"""

from __future__ import annotations

import torch

from autojudge_eval.engine.drafters import Proposal
from autojudge_eval.engine.kv_cache import KVCache
from autojudge_eval.engine.stack import LayerStack, cache_keyword, causal_mask
from autojudge_eval.errors import ModelLoadError

# Tensor names of a public EAGLE(-1) checkpoint's layer for a Llama target (vLLM's ``llama_eagle`` reads these,
# plus ``fc.weight``; biases where the config asks for them). Layer 0 has no input norm; the embedding and LM
# head are the target's.
LAYER_TENSORS = (
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)


class EagleHead(torch.nn.Module):
    """``fc`` + one decoder layer of the target's class; embedding, rotary and LM head are borrowed.

    ``config`` is the head's transformers config (the target's, one hidden layer). The layer is built from
    the target's own layer class, so the head runs exactly as a target layer would, minus its input norm.
    """

    def __init__(self, config, layer_class: type, *, fc_bias: bool = False) -> None:
        super().__init__()
        hidden = config.hidden_size
        self.config = config
        self.fc = torch.nn.Linear(2 * hidden, hidden, bias=fc_bias)
        self.layer = layer_class(config, layer_idx=0)
        self.cache_kw = cache_keyword(self.layer)
        self.layer.input_layernorm = torch.nn.Identity()  # EAGLE's layer 0 reads fc's output unnormalised
        self.hidden_size = hidden

    def state_dict_eagle(self) -> dict[str, torch.Tensor]:
        """The head's tensors under the public EAGLE names (``fc.weight``, ``layers.0.*``)."""
        out = {"fc.weight": self.fc.weight}
        if self.fc.bias is not None:
            out["fc.bias"] = self.fc.bias
        out |= {f"layers.0.{name}": param for name, param in self.layer.named_parameters()}
        return out

    def load_eagle(self, tensors: dict[str, torch.Tensor]) -> None:
        """Copy tensors named as :meth:`state_dict_eagle` names them (shapes checked by the caller)."""
        with torch.no_grad():
            for name, param in self.state_dict_eagle().items():
                param.copy_(tensors[name])

    def forward(
        self,
        embeds: torch.Tensor,
        features: torch.Tensor,
        rope,
        *,
        mask: torch.Tensor | None,
        positions: torch.Tensor,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """(B, q, H) token embeddings and (B, q, H) features -> (B, q, H) predicted next features."""
        hidden = self.fc(torch.cat([embeds, features], dim=-1))
        out = self.layer(
            hidden,
            attention_mask=mask,
            position_embeddings=rope,
            position_ids=positions,
            use_cache=cache is not None,
            **{self.cache_kw: cache},
        )
        return out[0] if isinstance(out, tuple) else out


class EagleModel:
    """An :class:`EagleHead` bound to its target's stack: the target's embedding and LM head, shared.

    ``vocab`` (token ids, most frequent first) restricts the draft head to its first ``head_vocab`` rows.
    """

    def __init__(
        self,
        head: EagleHead,
        stack: LayerStack,
        vocab: torch.Tensor | None = None,
        head_vocab: int | None = None,
    ) -> None:
        if head.hidden_size != stack.hidden_size:
            raise ModelLoadError(
                f"EAGLE head has hidden size {head.hidden_size}, the target {stack.hidden_size}: "
                "it was trained for another target"
            )
        self.head = head.to(stack.device, stack.dtype).eval()
        self.stack = stack
        # the head's own rotary embedding (its config's rope settings), of the target's class
        self.rotary = type(stack.rotary_emb)(config=head.config).to(stack.device)
        self.hidden_size = head.hidden_size
        self.rows: torch.Tensor | None = None
        weight = stack.lm_head.weight.detach()
        if head_vocab:
            if vocab is None:
                raise ModelLoadError("head=N needs an EAGLE head saved with a token-frequency list")
            self.rows = vocab[:head_vocab].to(stack.device)
            weight = weight[self.rows]
        # (H, V') stored transposed and contiguous: for one row, x @ W_t costs about half of F.linear(x, W)
        # on these CPUs (``engine.stack.RowLayout``); a draft token's choice needs no bitwise match
        self.head_t = weight.T.contiguous()

    def new_cache(self, max_len: int) -> KVCache:
        return KVCache.for_model(
            self.head.config, max_len, layers=1, dtype=self.stack.dtype, device=self.stack.device
        )

    def step(self, ids: torch.Tensor, features: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """(q,) next tokens + (q, H) features at the cache's next q positions -> (q, H) predicted features."""
        past, q = cache.length(), len(ids)
        positions = torch.arange(past, past + q, device=self.stack.device).unsqueeze(0)
        embeds = self.stack.embed(ids)
        rope = self.rotary(embeds, position_ids=positions)
        mask = causal_mask(past, q, self.stack.device)
        return self.head(embeds, features.unsqueeze(0), rope, mask=mask, positions=positions, cache=cache)[0]

    def tokens(self, predicted: torch.Tensor) -> torch.Tensor:
        """(q, H) predicted features -> (q,) greedy tokens in the target's vocabulary."""
        best = (predicted @ self.head_t).argmax(-1)
        return best if self.rows is None else self.rows[best]


class EagleDrafter:
    """A :class:`~autojudge_eval.engine.drafters.Drafter` over an :class:`EagleModel` (module docstring).

    The target's features reach it through :meth:`observe` (the loop passes the prefill's and each verify
    forward's normed last hidden states of the committed positions). ``calls`` counts head forwards.
    """

    kind = "eagle"
    reuses_target_states = False
    reads_features = True

    def __init__(self, model: EagleModel) -> None:
        self.model = model
        self.hidden_size = model.hidden_size
        self.cache: KVCache | None = None
        self.features: torch.Tensor | None = None  # (max_len, H) the target's features by position
        self.known = 0  # features[:known] are the target's
        self.valid = 0  # cache rows [0, valid) were written from the target's features
        self.calls = 0

    def reset(self, target_cache: KVCache) -> None:
        stack = self.model.stack
        if self.cache is None or self.cache.max_len < target_cache.max_len:
            self.cache = self.model.new_cache(target_cache.max_len)
            self.features = torch.zeros(
                target_cache.max_len, self.hidden_size, dtype=stack.dtype, device=stack.device
            )
        self.cache.crop(0)
        self.known = self.valid = self.calls = 0

    def observe(self, start: int, features: torch.Tensor) -> None:
        """The target's (n, H) normed last hidden states at positions ``[start, start + n)``."""
        if start > self.known:
            raise RuntimeError(f"EAGLE drafter: features from {start} given, only {self.known} known")
        end = start + len(features)
        self.features[start:end] = features.to(self.features.dtype)
        self.known = end
        self.valid = min(self.valid, start)

    @torch.inference_mode()
    def propose(self, seq: torch.Tensor, k: int, *, with_hidden: bool) -> Proposal:
        last = len(seq) - 2  # the last pair (f_last, seq[last + 1]) whose feature the target computed
        if last < 0:  # a one-token text: no feature yet, so no draft (the verify is a plain target step)
            return Proposal(tokens=seq.new_zeros(0))
        if self.known <= last:
            raise RuntimeError(f"EAGLE drafter: needs target features up to {last}, has {self.known}")
        start = min(self.valid, last)  # rewrite at least the last pair: its output predicts d_1
        self.cache.crop(start)
        model = self.model
        self.calls += 1
        predicted = model.step(seq[start + 1 : last + 2], self.features[start : last + 1], self.cache)[-1:]
        self.valid = last + 1
        tokens, hidden = [model.tokens(predicted)], []
        for _ in range(k - 1 + int(with_hidden)):  # one more step gives the hidden state of the last draft
            self.calls += 1
            predicted = model.step(tokens[-1], predicted, self.cache)
            hidden.append(predicted)
            tokens.append(model.tokens(predicted))
        out = torch.cat(tokens[:k]).to(seq.device)
        return Proposal(tokens=out, hidden=torch.cat(hidden) if with_hidden else None)

    def rollback(self, length: int) -> None:
        """Rows past ``length`` go; rows written from draft features are rewritten at the next proposal."""
        self.cache.crop(min(length, self.valid))
        self.known = min(self.known, length)
        self.valid = min(self.valid, length)
