"""AdaKV-style head-wise budget allocation (Feng et al., arXiv 2407.11550), usable with any
scoring policy: a layer's total budget (the sum of its heads' budgets) goes to the slots with
the highest scores across all its kv heads, so heads whose attention is concentrated give
tokens to heads that need them; each head first keeps its top ``alpha_safeguard`` share of its
own budget (kvpress's ``AdaKVPress`` default 0.2). Each head's cache really holds its own number
of slots (per-head lengths), unlike kvpress's masked "fake keys"."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxtok.config import require
from jaxtok.kvcompress.policy import PROTECT, Policy, plan_from_mask, valid_slots


@dataclasses.dataclass(frozen=True)
class AdaKV(Policy):
  inner: Policy = None
  alpha_safeguard: float = 0.2

  def __post_init__(self):
    require(isinstance(self.inner, Policy), "inner", "a scoring Policy", self.inner)
    require(0 <= self.alpha_safeguard <= 1, "alpha_safeguard", "in [0, 1]",
            self.alpha_safeguard)

  @property
  def name(self):
    return f"adakv_{self.inner.name}"

  @property
  def needs_window(self):
    return self.inner.needs_window

  merges = False  # plan_from_mask: keeps or drops only
  headwise = True

  def allocate(self, budget, obs):
    return self.inner.allocate(budget, obs)

  def score(self, layer, obs, l, budget_BxK):
    return self.inner.score(layer, obs, l, budget_BxK)

  def plan(self, layer, obs, l, budget_BxK):
    b, k, s = layer.pos.shape
    valid = valid_slots(layer)
    sc = jnp.where(valid, self.score(layer, obs, l, budget_BxK).astype(jnp.float32), -jnp.inf)
    rank_in_head = jnp.argsort(jnp.argsort(-sc, axis=-1, stable=True), axis=-1)
    floor_BxK = (budget_BxK * self.alpha_safeguard).astype(jnp.int32)
    sc = jnp.where(valid & (rank_in_head < floor_BxK[..., None]), 2 * PROTECT, sc)
    flat = sc.reshape(b, k * s)
    rank = jnp.argsort(jnp.argsort(-flat, axis=-1, stable=True), axis=-1).reshape(b, k, s)
    total_B = jnp.minimum(jnp.sum(budget_BxK, axis=1), jnp.sum(layer.length, axis=1))
    kept = valid & (rank < total_B[:, None, None])
    return plan_from_mask(kept, jnp.sum(kept, axis=-1).astype(jnp.int32), s)
