"""SnapKV (Li et al., arXiv 2404.14469): the prompt's last queries vote for the slots to keep.

Score of slot j = the attention mass it received from the observation window (the prompt's last
``obs.window_size`` queries, summed over the query heads of each kv head - the GQA aggregation
of §4), pooled along the sequence (kernel ``kernel``, max or average: §3.2's clustering, so a
kept token brings its neighbours); the window itself is always kept. The pooling runs over the
slots before the window only (the window's own votes are padding: zero for the average, -inf
for the max), as the official SnapKV code (``attn_weights_sum[..., :-window_size]``) and
kvpress's ``SnapKVPress`` do, so the window's large self-attention never leaks into the scores
of the last slots before it. Defaults: kernel 7, max pool (SentenceKV's LongBench script);
kvpress uses average pooling (zero padding counted), kernel 5 - ``SnapKV(kernel=5,
pool_kind="avg")`` matches it slot for slot (tests/kvcompress/test_kvpress_parity.py).
Ranking is unchanged by summing (ours) instead of averaging (kvpress) over window queries and
the query heads of a kv head: both are positive multiples of the same per-head sums.
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import jax
import jax.numpy as jnp

from jaxtok.config import require
from jaxtok.kvcompress.policy import PROTECT, Policy, recent_mask, valid_slots


def pool(x_BxKxS, kernel: int, kind: str):
  """1-D pooling along slots with 'same' padding (padding never wins a max or adds mass)."""
  if kernel == 1:
    return x_BxKxS
  if kind == "max":
    return jax.lax.reduce_window(x_BxKxS, -jnp.inf, jax.lax.max, (1, 1, kernel), (1, 1, 1),
                                 "SAME")
  return jax.lax.reduce_window(x_BxKxS, 0.0, jax.lax.add, (1, 1, kernel), (1, 1, 1),
                               "SAME") / kernel


@dataclasses.dataclass(frozen=True)
class SnapKV(Policy):
  name = "snapkv"
  merges = False
  needs_window = True
  kernel: int = 7
  pool_kind: Literal["max", "avg"] = "max"

  def __post_init__(self):
    require(self.kernel >= 1 and self.kernel % 2 == 1, "kernel", "a positive odd integer",
            self.kernel)
    require(self.pool_kind in ("max", "avg"), "pool_kind", "'max' or 'avg'", self.pool_kind)

  def window_scores(self, layer, obs, l):
    if obs.window is None:
      raise ValueError(f"{self.name}: the observation has no window statistics (use "
                       "jaxtok.kvcompress.observe with window > 0)")
    window_BxKxS = recent_mask(layer, obs.window_size)
    pad = -jnp.inf if self.pool_kind == "max" else 0.0
    votes = jnp.where(valid_slots(layer) & ~window_BxKxS, obs.window[l].sum_BxKxS, pad)
    return pool(votes, self.kernel, self.pool_kind)

  def score(self, layer, obs, l, budget_BxK):
    return jnp.where(recent_mask(layer, obs.window_size), PROTECT,
                     self.window_scores(layer, obs, l))
