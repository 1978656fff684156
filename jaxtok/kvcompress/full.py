"""Full: the identity policy (every valid slot kept whatever the budget): the reference every
compressed cache is compared with."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxtok.kvcompress.policy import Policy, top_plan


@dataclasses.dataclass(frozen=True)
class Full(Policy):
  name = "full"
  merges = False

  def score(self, layer, obs, l, budget_BxK):
    return jnp.zeros(layer.pos.shape, jnp.float32)

  def plan(self, layer, obs, l, budget_BxK):
    return top_plan(self.score(layer, obs, l, budget_BxK), layer, layer.length)
