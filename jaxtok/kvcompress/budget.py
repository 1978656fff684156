"""KV budgets: explicit token counts per (layer, kv head), built from a keep ratio, a pyramid
schedule (PyramidKV, arXiv 2406.02069) or given per head. A schedule that cannot be honoured
says so in ``Budget.fallback`` instead of silently changing (kvpress's PyramidKV becomes SnapKV
when a layer's budget drops below its window). Head-wise allocation that depends on the scores
(AdaKV) is a policy wrapper (``adakv.AdaKV``). Host-side only: no arrays are traced here.
"""
from __future__ import annotations

import dataclasses

import numpy as np

from jaxtok.config import require


@dataclasses.dataclass(frozen=True)
class Budget:
  """Tokens kept per (layer, kv head): ``per_head[l][k]``; ``fallback`` names every place a
  schedule could not be honoured (empty when none)."""
  per_head: tuple[tuple[int, ...], ...]
  fallback: tuple[str, ...] = ()

  def __post_init__(self):
    require(len(self.per_head) > 0, "budget.per_head", "one row per layer", self.per_head)
    for l, row in enumerate(self.per_head):
      require(len(row) > 0 and all(int(b) > 0 for b in row), f"budget.per_head[{l}]",
              "positive token counts per kv head", row)

  @property
  def array(self) -> np.ndarray:
    return np.asarray(self.per_head, np.int32)

  def check(self, n_layers: int, kv_heads: int, capacity: int) -> None:
    a = self.array
    require(a.shape == (n_layers, kv_heads), "budget", f"shape (layers, kv heads) = "
            f"{(n_layers, kv_heads)}", a.shape)
    require(int(a.max()) <= capacity, "budget", f"at most the cache capacity {capacity}",
            int(a.max()))

  def min(self) -> int:
    return int(self.array.min())


def uniform(n_layers: int, kv_heads: int, tokens: int) -> Budget:
  require(tokens > 0, "budget tokens", "> 0", tokens)
  return Budget(tuple((tokens,) * kv_heads for _ in range(n_layers)))


def from_ratio(n_layers: int, kv_heads: int, length: int, keep_ratio: float) -> Budget:
  """``max(1, floor(keep_ratio * length))`` tokens per (layer, kv head)."""
  require(0 < keep_ratio <= 1, "keep_ratio", "in (0, 1]", keep_ratio)
  require(length > 0, "length", "> 0", length)
  return uniform(n_layers, kv_heads, max(1, int(keep_ratio * length)))


def pyramid(n_layers: int, kv_heads: int, tokens: int, window: int, beta: float = 20.0) -> Budget:
  """PyramidKV's schedule (arXiv 2406.02069 §3.2, as its reference code): average ``tokens``
  per layer, the window always kept, the rest decreasing linearly with depth from
  2(C - w) - (C - w)/beta to (C - w)/beta. Falls back to the uniform budget, and says so, when
  ``tokens <= window`` (no room for a pyramid)."""
  require(tokens > 0, "budget tokens", "> 0", tokens)
  require(window >= 0, "window", ">= 0", window)
  require(beta > 0, "beta", "> 0", beta)
  free = tokens - window
  if free <= 0 or n_layers == 1:
    why = (f"pyramid: budget {tokens} <= window {window}; uniform budget used" if free <= 0
           else "pyramid: one layer; uniform budget used")
    return Budget(uniform(n_layers, kv_heads, tokens).per_head, (why,))
  lo = free / beta
  hi = 2 * free - lo
  rows, clipped = [], False
  for l in range(n_layers):
    b = int(round(hi - l * (hi - lo) / (n_layers - 1))) + window
    if b < 1:
      b, clipped = 1, True
    rows.append((b,) * kv_heads)
  return Budget(tuple(rows), ("pyramid: a layer budget was raised to 1",) if clipped else ())
