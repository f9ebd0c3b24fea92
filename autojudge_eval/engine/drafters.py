"""Drafters propose K tokens after the committed text; the engine verifies them with the target.

Every drafter implements :class:`Drafter`, the contract ``engine.decoding`` relies on. Three exist:

* :class:`ModelDrafter` — a draft model with its own KV cache: a separate causal LM of the same
  vocabulary (:class:`FullModel`), or an :class:`EarlyExit` of a copy of the target in another dtype;
* :class:`SelfDrafter` — an :class:`EarlyExit` of the target itself: its first L layers, an affine adapter
  into the last layer's hidden space, the final norm and the LM head (optionally restricted to the most
  frequent tokens). It shares the target's KV cache for those L layers and hands the layer-L states of its
  window to the verifier, so the target only runs its remaining layers on the window;
* ``engine.ngram.NgramDrafter`` — prompt lookup: no draft model, no hidden states, no draft forward;
* ``engine.eagle.EagleDrafter`` — an EAGLE head: one decoder layer over [next token ; the target's feature],
  with its own small cache, fed the target's features by the loop (:meth:`Drafter.observe`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from autojudge_eval.engine.kv_cache import KVCache
from autojudge_eval.engine.stack import LayerStack
from autojudge_eval.errors import ConfigError, JudgeArtifactError

if TYPE_CHECKING:
    from autojudge_eval.engine.eagle import EagleModel

ADAPTER_FORMAT = "autojudge-selfdraft/1"
DEFAULT_ADAPTER = Path(__file__).parents[1] / "assets" / "selfdraft" / "adapter.safetensors"


@dataclass
class Proposal:
    """K draft tokens and what the verifier and the judge may reuse."""

    tokens: torch.Tensor  # (K,) long, on the target's device
    hidden: torch.Tensor | None = (
        None  # (K, Hd): the draft's last hidden state after reading each draft token
    )
    reuse: tuple[int, torch.Tensor] | None = None  # (layer, (1, K+1, H)): target residual at that layer


@runtime_checkable
class Drafter(Protocol):
    """What the decoding loop asks of a drafter, once per generation and once per cycle.

    * ``reset(target_cache)`` at the start of a generation (the target's cache, already holding the
      prompt but its last token; a drafter may share it or size its own from ``target_cache.max_len``);
    * ``propose(seq, k, with_hidden=...)`` once per cycle: K tokens after the committed ``seq`` ((T,) long),
      with the draft's hidden states when a DD judge needs them, and target states it computed anyway
      (``Proposal.reuse``) for the verifier to skip;
    * ``observe(start, features)`` after each verify, and after the prefill for a drafter that
      ``reads_features``: the target's (n, H) normed last hidden states at the committed positions
      ``[start, start + n)`` (an EAGLE head drafts from them; the other drafters ignore them, and the loop
      skips the final norm over the prefill that only they would read);
    * ``rollback(length)`` after verification: forget everything past ``length`` committed positions;
    * ``calls``: draft forwards (or lookups) since ``reset``.

    A proposal may be empty (K = 0): the verify forward is then a plain one-token target step.

    ``kind`` says how mining predicts whole texts with it (``mining.rollout.draft_view``): ``"self"`` (an
    early exit inside the target's own cache: from the target's residuals), ``"model"`` (a network with its
    own cache: teacher-forced), ``"lookup"`` (no network: by lookup over the text so far) or ``"eagle"`` (a
    head over the target's features: teacher-forced on the features the rollouts record). ``model`` is the
    draft network (``FullModel``, ``EarlyExit`` or ``EagleModel``; None for a lookup) and ``hidden_size`` the
    size of the hidden states a proposal carries (0: none, so DD-DT judges cannot run with it).
    """

    calls: int
    kind: str
    model: FullModel | EarlyExit | EagleModel | None
    hidden_size: int
    reuses_target_states: bool
    reads_features: bool

    def reset(self, target_cache: KVCache) -> None: ...

    def propose(self, seq: torch.Tensor, k: int, *, with_hidden: bool) -> Proposal: ...

    def observe(self, start: int, features: torch.Tensor) -> None: ...

    def rollback(self, length: int) -> None: ...


@dataclass
class Adapter:
    """h_L -> W h_L + b, fitted to the target's last-layer residual; plus an optional draft vocabulary."""

    weight: torch.Tensor  # (H, H)
    bias: torch.Tensor  # (H,)
    exit_layer: int
    card: dict = field(default_factory=dict)
    vocab: torch.Tensor | None = None  # (V',) token ids, most frequent first

    def save(self, path: Path, card: dict) -> None:
        tensors = {"weight": self.weight.float().contiguous(), "bias": self.bias.float().contiguous()}
        if self.vocab is not None:
            tensors["vocab"] = self.vocab.long().contiguous()
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(path))
        full = {
            "format": ADAPTER_FORMAT,
            "exit_layer": self.exit_layer,
            "hidden_size": self.weight.shape[0],
            **card,
        }
        path.with_suffix(".json").write_text(json.dumps(full, indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Adapter:
        card_path = path.with_suffix(".json")
        if not path.is_file() or not card_path.is_file():
            raise JudgeArtifactError(f"self-draft adapter needs {path} and its card {card_path}")
        try:
            card = json.loads(card_path.read_text())
            tensors = load_file(str(path))
        except (OSError, ValueError, SafetensorError) as exc:
            raise JudgeArtifactError(f"corrupt self-draft adapter {path}: {exc}") from exc
        if card.get("format") != ADAPTER_FORMAT or "weight" not in tensors or "bias" not in tensors:
            raise JudgeArtifactError(f"{path} is not a self-draft adapter (format {card.get('format')!r})")
        return cls(tensors["weight"], tensors["bias"], int(card["exit_layer"]), card, tensors.get("vocab"))


class FullModel:
    """A separate causal LM as a draft model; its head is trimmed/padded to the target's vocabulary."""

    def __init__(self, stack: LayerStack, target_vocab: int) -> None:
        self.stack = stack
        self.target_vocab = target_vocab
        self.hidden_size = stack.hidden_size

    def new_cache(self, max_len: int) -> KVCache:
        return self.stack.new_cache(max_len)

    def step(self, ids: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        """(q,) ids -> ((H,) last hidden state, () greedy next token) after the last of them."""
        normed, logits = self.stack.forward(ids, cache)
        return normed[-1], _fit_vocab(logits[-1], self.target_vocab).argmax()


class EarlyExit:
    """The first ``exit_layer`` layers of a model + adapter + final norm + (a subset of) its LM head."""

    def __init__(self, stack: LayerStack, adapter: Adapter, head_vocab: int | None = None) -> None:
        if adapter.weight.shape != (stack.hidden_size, stack.hidden_size):
            raise JudgeArtifactError(
                f"self-draft adapter is {tuple(adapter.weight.shape)}, the target's hidden size is "
                f"{stack.hidden_size}: fit an adapter for this target with `autojudge-eval fit-draft`"
            )
        if not 1 <= adapter.exit_layer < stack.num_layers:
            raise ConfigError(f"exit layer {adapter.exit_layer} outside 1..{stack.num_layers - 1}")
        self.stack = stack
        self.exit_layer = adapter.exit_layer
        self.hidden_size = stack.hidden_size
        self.weight = adapter.weight.to(stack.device, stack.dtype)
        self.bias = adapter.bias.to(stack.device, stack.dtype)
        self.rows: torch.Tensor | None = None
        self.head_weight: torch.Tensor | None = None
        if head_vocab:
            if adapter.vocab is None:
                raise ConfigError(
                    "head=N needs an adapter fitted with a token-frequency list (fit-draft stores one)"
                )
            self.rows = adapter.vocab[:head_vocab].to(stack.device)
            self.head_weight = stack.lm_head.weight[self.rows].contiguous()

    def new_cache(self, max_len: int) -> KVCache:
        stack = self.stack
        return KVCache.for_model(
            stack.config, max_len, layers=self.exit_layer, dtype=stack.dtype, device=stack.device
        )

    def lower(self, ids: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """(q,) ids -> (1, q, H) residual after ``exit_layer`` layers."""
        return self.stack.run(self.stack.embed(ids), cache, 0, self.exit_layer)

    def hidden(self, residual: torch.Tensor) -> torch.Tensor:
        """(1, q, H) layer-L residual -> (q, H) the draft's last hidden state (adapter + final norm)."""
        return self.stack.norm(residual + torch.nn.functional.linear(residual, self.weight, self.bias))[0]

    def tokens(self, normed: torch.Tensor) -> torch.Tensor:
        """(q, H) draft hidden states -> (q,) greedy draft tokens in the target's vocabulary."""
        if self.head_weight is None:
            return self.stack.lm_head(normed).argmax(-1)
        return self.rows[(normed @ self.head_weight.T).argmax(-1)]

    def step(self, ids: torch.Tensor, cache: KVCache) -> tuple[torch.Tensor, torch.Tensor]:
        normed = self.hidden(self.lower(ids, cache)[:, -1:])
        return normed[0], self.tokens(normed)[0]


class ModelDrafter:
    """Drafts with its own cache (a separate model, or a copy in another dtype); catches up on new text."""

    kind = "model"
    reuses_target_states = False
    reads_features = False

    def __init__(self, model: FullModel | EarlyExit, device) -> None:
        self.model = model
        self.hidden_size = model.hidden_size
        self.device = device
        self.cache: KVCache | None = None
        self.calls = 0

    def reset(self, target_cache: KVCache) -> None:
        self.cache = self.model.new_cache(target_cache.max_len)
        self.calls = 0

    def _step(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.calls += 1
        return self.model.step(ids.to(self.model.stack.device), self.cache)

    @torch.inference_mode()
    def propose(self, seq: torch.Tensor, k: int, *, with_hidden: bool) -> Proposal:
        _, token = self._step(seq[self.cache.length() :])
        tokens, hidden = [token], []
        for _ in range(k - 1 + int(with_hidden)):  # one more step gives the hidden state of the last draft
            h, token = self._step(tokens[-1].view(1))
            hidden.append(h)
            tokens.append(token)
        tokens = torch.stack(tokens[:k]).to(self.device)
        return Proposal(tokens=tokens, hidden=torch.stack(hidden) if with_hidden else None)

    def observe(self, start: int, features: torch.Tensor) -> None:
        """A separate draft model reads tokens, not the target's features."""

    def rollback(self, length: int) -> None:
        self.cache.crop(length)


class SelfDrafter:
    """An :class:`EarlyExit` of the target itself, sharing the target's cache for its layers.

    Its window's layer-L states go to the verifier, which then runs only the target's remaining layers.
    """

    kind = "self"
    reuses_target_states = True
    reads_features = False

    def __init__(self, exit_model: EarlyExit) -> None:
        self.model = exit_model
        self.hidden_size = exit_model.hidden_size
        self.exit_layer = exit_model.exit_layer
        self.cache: KVCache | None = None
        self.calls = 0

    def reset(self, target_cache: KVCache) -> None:
        self.cache = target_cache
        self.calls = 0

    @torch.inference_mode()
    def propose(self, seq: torch.Tensor, k: int, *, with_hidden: bool) -> Proposal:
        token, states, normed, ids = seq[-1:], [], [], []
        for step in range(k + 1):  # the last step only computes layer-L states of the last draft token
            self.calls += 1
            states.append(self.model.lower(token, self.cache))
            if step < k:
                normed.append(self.model.hidden(states[-1]))
                token = self.model.tokens(normed[-1])
                ids.append(token)
        hidden = None
        if with_hidden:  # after reading draft i: the states that predicted draft i+1, then the last one
            hidden = torch.cat([*normed[1:], self.model.hidden(states[-1])])
        window = torch.cat(states, dim=1)  # (1, k+1, H): pending token + k drafts
        return Proposal(tokens=torch.cat(ids), hidden=hidden, reuse=(self.exit_layer, window))

    def observe(self, start: int, features: torch.Tensor) -> None:
        """The self-draft reads the target's own cache, not its last hidden states."""

    def rollback(self, length: int) -> None:
        """The target cache was cropped already; nothing of our own to undo."""


def _fit_vocab(logits: torch.Tensor, size: int) -> torch.Tensor:
    """Trim or pad draft logits to the target's vocabulary size (heads are often padded differently)."""
    if logits.shape[-1] >= size:
        return logits[..., :size]
    pad = logits.new_full((*logits.shape[:-1], size - logits.shape[-1]), float("-inf"))
    return torch.cat([logits, pad], dim=-1)
