"""A preallocated KV cache with an explicit length per layer.

The buffers are allocated once at their maximum length and written at explicit positions, as in gpt-fast:
a rollback after rejected draft tokens only sets the lengths, and the next forward overwrites those slots.
Lengths are kept per layer because a self-draft runs the target's first layers ahead of the rest.

The object duck-types the one method transformers' attention modules call, ``update``.
"""

from __future__ import annotations

import torch


def cache_shape(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head dim) of a transformers ``config``."""
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return config.num_hidden_layers, kv_heads, head_dim


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
        num_layers, kv_heads, head_dim = cache_shape(config)
        num_layers = num_layers if layers is None else layers
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


class RowCache:
    """Independent sequences in one batch, each at its own length; one new token per row per step.

    Mining runs many greedy continuations at once (one per problem in flight). Row ``r`` holds positions
    ``[0, lengths[r])``; a step writes every row's new token at that row's own length, and the attention mask
    (:meth:`step_mask`) hides each row's unused tail. Rows are loaded from and saved to batch-1
    :class:`KVCache` objects by slice copies. Steps run over the first ``rows`` rows only (:meth:`begin_step`),
    so idle rows at the end of the batch cost nothing.
    """

    def __init__(self, num_layers, kv_heads, head_dim, max_len, *, rows, dtype=torch.float32, device="cpu"):
        shape = (num_layers, rows, kv_heads, max_len, head_dim)
        self.keys = torch.zeros(shape, dtype=dtype, device=device)
        self.values = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = [0] * rows
        self.max_len = max_len
        self.device = device
        self._pos: torch.Tensor | None = None
        self._width = 0

    @classmethod
    def for_model(cls, config, max_len: int, *, rows: int, dtype=None, device="cpu") -> RowCache:
        return cls(*cache_shape(config), max_len, rows=rows, dtype=dtype, device=device)

    @property
    def rows(self) -> int:
        return len(self.lengths)

    def load(self, row: int, src: KVCache, start: int, end: int) -> None:
        """Row ``row`` takes ``src``'s positions ``[start, end)`` (it already agrees on ``[0, start)``)."""
        if src.length() < end or end > self.max_len:
            raise RuntimeError(f"cannot load positions {start}..{end} from a cache of {src.length()}")
        self.keys[:, row, :, start:end] = src.keys[:, 0, :, start:end]
        self.values[:, row, :, start:end] = src.values[:, 0, :, start:end]
        self.lengths[row] = end

    def save(self, row: int, dst: KVCache, start: int, end: int) -> None:
        """``dst`` takes row ``row``'s positions ``[start, end)``; its length becomes ``end``."""
        if self.lengths[row] < end:
            raise RuntimeError(f"row {row} holds {self.lengths[row]} positions, not {end}")
        dst.keys[:, 0, :, start:end] = self.keys[:, row, :, start:end]
        dst.values[:, 0, :, start:end] = self.values[:, row, :, start:end]
        dst.lengths = [end] * dst.num_layers

    def begin_step(self, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Prepare a step over rows ``[0, rows)``: ((rows, 1) positions, (rows, 1, 1, width) bool mask)."""
        pos = torch.tensor(self.lengths[:rows], dtype=torch.long, device=self.device)
        self._width = int(pos.max()) + 1
        if self._width > self.max_len:
            raise RuntimeError(f"KV cache overflow: {self._width} positions needed, {self.max_len} allocated")
        self._pos = pos
        mask = torch.arange(self._width, device=self.device) <= pos.unsqueeze(1)
        return pos.unsqueeze(1), mask.view(rows, 1, 1, self._width)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int, *args, **kwargs):
        """Write (rows, kv_heads, 1, head_dim) at each row's position; return the rows' keys/values."""
        rows = key.shape[0]
        index = torch.arange(rows, device=key.device)
        self.keys[layer_idx, index, :, self._pos] = key[:, :, 0]
        self.values[layer_idx, index, :, self._pos] = value[:, :, 0]
        return self.keys[layer_idx, :rows, :, : self._width], self.values[layer_idx, :rows, :, : self._width]

    def end_step(self, rows: int) -> None:
        for r in range(rows):
            self.lengths[r] += 1

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self._width
