"""H2O - Heavy-Hitter Oracle (Zhang et al., arXiv 2306.14048).

Score of slot j = the attention mass it received from every query so far, sum_t a[t, j]
(§3, "accumulated attention scores"), summed over the query heads of a kv head; the most recent
``recent_fraction`` of the budget is always kept (the paper splits the budget about 50/50
between heavy hitters and recent tokens). During decoding the accumulated scores are carried
with the cache (``jaxtok.kvcompress.decoding``) and the greedy eviction runs every step.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxtok.config import require
from jaxtok.kvcompress.policy import PROTECT, Policy, recent_mask


@dataclasses.dataclass(frozen=True)
class H2O(Policy):
  name = "h2o"
  merges = False
  recent_fraction: float = 0.5

  def __post_init__(self):
    require(0 <= self.recent_fraction < 1, "recent_fraction", "in [0, 1)", self.recent_fraction)

  def score(self, layer, obs, l, budget_BxK):
    recent_BxK = (budget_BxK * self.recent_fraction).astype(jnp.int32)
    return jnp.where(recent_mask(layer, recent_BxK), PROTECT, obs.total[l].sum_BxKxS)
