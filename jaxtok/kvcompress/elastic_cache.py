"""Elastic Cache (Liu et al., arXiv 2407.18121, ECCV 2024; liuzuyan/ElasticCache).

Instruction (prefill) stage, §3.2-3.3: importance of slot j = its column sum of the
head-averaged prompt attention, I_j = sum_t mean_h a[t, j] (one ranking per layer); the
``start`` first tokens and the last one are protected; the top-``budget`` slots become anchors
and every other slot is merged into its *positionally nearest* anchor (mass-weighted mean of
keys and values; the paper's plain mean when every slot holds one token).
Generation stage, §3.4 "distance with offset": when over budget, the slots just before the last
``-distance`` ones are evicted (the prompt's anchors and a recent FIFO window stay).
Plain top-k by importance; the released code's argsort-vs-count quirk is not ported.
``merge=False`` is the ablation: the same anchors, every other slot evicted (no merging).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxtok.config import require
from jaxtok.kvcompress.policy import (PROTECT, LayerPlan, Policy, recent_mask, top_plan,
                                    valid_slots)


def neighbours(plan: LayerPlan, pos_BxKxS):
  """New indices of the kept slots just before and after each slot's position, and the
  distances to them."""
  s = pos_BxKxS.shape[-1]
  big = jnp.iinfo(jnp.int32).max // 2
  live = jnp.arange(s)[None, None, :] < plan.n_keep_BxK[..., None]
  anchor_pos = jnp.where(live, jnp.take_along_axis(pos_BxKxS, plan.keep_BxKxS, axis=2), big)
  right = jax.vmap(jax.vmap(jnp.searchsorted))(anchor_pos, pos_BxKxS)
  hi = jnp.minimum(right, jnp.maximum(plan.n_keep_BxK[..., None] - 1, 0))
  lo = jnp.maximum(right - 1, 0)
  d_lo = jnp.abs(pos_BxKxS - jnp.take_along_axis(anchor_pos, lo, axis=2))
  d_hi = jnp.abs(jnp.take_along_axis(anchor_pos, hi, axis=2) - pos_BxKxS)
  return lo, hi, d_lo, d_hi


def nearest_kept(plan: LayerPlan, pos_BxKxS):
  """New index of the kept slot whose position is nearest each slot's (ties: the earlier)."""
  lo, hi, d_lo, d_hi = neighbours(plan, pos_BxKxS)
  return jnp.where(d_lo <= d_hi, lo, hi)


@dataclasses.dataclass(frozen=True)
class ElasticCache(Policy):
  name = "elastic_cache"
  start: int = 4
  distance: int = -25
  merge: bool = True  # False: evict the non-anchors instead of merging them (ablation)

  def __post_init__(self):
    require(self.start >= 0, "start", ">= 0", self.start)
    require(self.distance < 0, "distance", "< 0 (an offset back from the newest slot)",
            self.distance)

  def allocate(self, budget, obs):
    require(budget.min() > self.start + 1, "budget",
            f"more tokens than the {self.start} protected start tokens + the last one",
            budget.min())
    return budget

  def score(self, layer, obs, l, budget_BxK):
    imp_BxKxS = obs.total[l].sum_BxKxS
    imp_BxKxS = jnp.broadcast_to(jnp.mean(imp_BxKxS, axis=1, keepdims=True), imp_BxKxS.shape)
    protect = ((layer.pos >= 0) & (layer.pos < self.start)) | recent_mask(layer, 1)
    return jnp.where(protect, PROTECT, imp_BxKxS)

  def plan(self, layer, obs, l, budget_BxK):
    plan = top_plan(self.score(layer, obs, l, budget_BxK), layer, budget_BxK)
    if not self.merge:
      return plan
    dest = jnp.where(valid_slots(layer), nearest_kept(plan, layer.pos), layer.capacity)
    kept = plan.dest_BxKxS < layer.capacity
    return plan.replace(dest_BxKxS=jnp.where(kept, plan.dest_BxKxS, dest))

  def decode_plan(self, layer, obs, l, budget_BxK):
    slot = jnp.arange(layer.capacity)[None, None, :]
    excess_BxK = jnp.maximum(layer.length - budget_BxK, 0)
    end_BxK = jnp.maximum(layer.length + self.distance, excess_BxK)
    evict = (slot >= (end_BxK - excess_BxK)[..., None]) & (slot < end_BxK[..., None])
    return top_plan(jnp.where(evict, 0.0, 1.0), layer, budget_BxK)
