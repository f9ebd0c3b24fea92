"""A preallocated KV cache with an explicit length per layer.

The buffers are allocated once at their maximum length and written at explicit positions, as in gpt-fast:
a rollback after rejected draft tokens only sets the lengths, and the next forward overwrites those slots.
Lengths are kept per layer because a self-draft runs the target's first layers ahead of the rest.

The object duck-types the one method transformers' attention modules call, ``update``.
"""

from __future__ import annotations

import torch


class KVCache:
    """Keys/values for ``num_layers`` layers, shape ``(batch, kv_heads, max_len, head_dim)`` each."""

    def __init__(
        self,
        num_layers: int,
        kv_heads: int,
        head_dim: int,
        max_len: int,
        *,
        batch: int = 1,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> None:
        shape = (num_layers, batch, kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = [0] * num_layers
        self.max_len = max_len

    @classmethod
    def for_model(
        cls, config, max_len: int, *, layers: int | None = None, batch: int = 1, dtype=None, device="cpu"
    ) -> KVCache:
        """A cache shaped for a transformers ``config``; ``layers`` keeps only the first N layers."""
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
        num_layers = config.num_hidden_layers if layers is None else layers
        return cls(num_layers, kv_heads, head_dim, max_len, batch=batch, dtype=dtype, device=device)

    @property
    def num_layers(self) -> int:
        return len(self.lengths)

    def length(self, layer: int = 0) -> int:
        return self.lengths[layer]

    def crop(self, length: int) -> None:
        """Forget every position at or after ``length`` (a rollback: nothing is copied)."""
        if length < 0:
            raise ValueError(f"cannot crop a KV cache to a negative length ({length})")
        self.lengths = [min(n, length) for n in self.lengths]

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Append ``key``/``value`` (batch, kv_heads, q, head_dim) to layer ``layer_idx``; return all of it."""
        start = self.lengths[layer_idx]
        end = start + key.shape[-2]
        if end > self.max_len:
            raise RuntimeError(f"KV cache overflow: {end} positions needed, {self.max_len} allocated")
        self.keys[layer_idx, :, :, start:end] = key
        self.values[layer_idx, :, :, start:end] = value
        self.lengths[layer_idx] = end
        return self.keys[layer_idx, :, :, :end], self.values[layer_idx, :, :, :end]

    # transformers' mask helpers and generation utilities query these; we build masks ourselves.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]
