"""Random: keeps a uniformly random subset of the budget's size per (layer, row, kv head) - the
floor every scorer must beat (kvpress ``RandomPress``)."""
from __future__ import annotations

import dataclasses

import jax

from jaxtok.kvcompress.policy import Policy


@dataclasses.dataclass(frozen=True)
class Random(Policy):
  name = "random"
  merges = False
  seed: int = 0

  def score(self, layer, obs, l, budget_BxK):
    key = jax.random.fold_in(jax.random.key(self.seed), l)
    return jax.random.uniform(key, layer.pos.shape)
