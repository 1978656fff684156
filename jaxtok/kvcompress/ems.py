"""EMS - Evict-then-Merge with a Global-Local score, head-wise (Li et al., arXiv 2412.08521).

Only the abstract was available to us, so this is the reconstruction of kv_and_tree.md §A.1
(call it "EMS-style"); each choice below is ours where marked.
* Global-Local score (paper: global and local accumulated attention combined to cancel the
  causal-mask bias of accumulated scores and the RoPE-decay bias of window scores).
  Ours: global G_j = sum_t a[t, j] / n_j with n_j the number of queries that could see slot j
  (removes the causal bias), local L_j = the observation window's mass; each normalised per
  (row, head) over the candidate slots (valid, not protected: the sinks' huge mass must not set
  the scale), by min-max (``normalise="minmax"``, the notes' reconstruction) or by rank
  (``"rank"``: the fraction of candidates scoring lower, robust to outliers);
  S_j = max(G^_j, L^_j). Sinks and the window are protected.
* Evict-then-merge, head-wise by redundancy (paper: heads differ in sparsity and redundancy).
  Ours: the top-``budget`` slots by S are class centres; every other slot goes to the more
  cosine-similar of its two positionally adjacent centres (the one before and the one after
  it: O(S) per head, where all centres would cost O(S^2)), if that similarity is at least
  ``merge_threshold``
  (redundant: merged, mass-weighted), else to the zero class (evicted). So how much each head
  merges follows how redundant its keys are, with no per-head switch.
* Zero class (paper: unifies eviction and merging so heads compress in parallel): the trash
  destination of ``LayerPlan``; one scatter-add applies every head's plan.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxtok.config import require
from jaxtok.kvcompress.policy import PROTECT, Policy, recent_mask, top_plan, valid_slots
from jaxtok.kvcompress.elastic_cache import neighbours
from jaxtok.kvcompress.snapkv import pool


def rank_norm(x_BxKxS, valid_BxKxS):
  """Fraction of the valid slots with a lower score (0 for invalid slots)."""
  x = jnp.where(valid_BxKxS, x_BxKxS, -jnp.inf)
  r = jnp.argsort(jnp.argsort(x, axis=-1, stable=True), axis=-1)
  n_invalid = jnp.sum(~valid_BxKxS, axis=-1, keepdims=True)
  n_valid = jnp.maximum(jnp.sum(valid_BxKxS, axis=-1, keepdims=True), 1)
  return jnp.where(valid_BxKxS, (r - n_invalid) / n_valid, 0.0)


def minmax(x_BxKxS, valid_BxKxS):
  lo = jnp.min(jnp.where(valid_BxKxS, x_BxKxS, jnp.inf), axis=-1, keepdims=True)
  hi = jnp.max(jnp.where(valid_BxKxS, x_BxKxS, -jnp.inf), axis=-1, keepdims=True)
  return jnp.where(valid_BxKxS, (x_BxKxS - lo) / jnp.maximum(hi - lo, 1e-12), 0.0)


@dataclasses.dataclass(frozen=True)
class EMS(Policy):
  name = "ems"
  needs_window = True
  sinks: int = 4
  merge_threshold: float = 0.8  # cosine similarity above which a dropped slot is merged
  normalise: str = "minmax"  # or "rank"
  # "count": a merged slot is the token-count-weighted mean (every token equal); "score": the
  # mean weighted by each token's Global-Local score S_j (ours: the class centre, the top
  # scorer, dominates what was folded into it instead of being diluted by its neighbours)
  merge_weight: str = "count"
  # max-pool kernel over slots applied to both raw scores before normalising (1: none, the
  # reconstruction's default; 7: SnapKV's clustering, so a kept token brings its neighbours -
  # an ablation: the paper's text was not available to say whether EMS pools)
  pool: int = 1

  def __post_init__(self):
    require(self.sinks >= 0, "sinks", ">= 0", self.sinks)
    require(self.normalise in ("minmax", "rank"), "normalise", "'minmax' or 'rank'",
            self.normalise)
    require(self.pool >= 1 and self.pool % 2 == 1, "pool", "a positive odd integer", self.pool)
    require(self.merge_weight in ("count", "score"), "merge_weight", "'count' or 'score'",
            self.merge_weight)
    require(-1 <= self.merge_threshold <= 1.01, "merge_threshold", "in [-1, 1.01] (> 1: never "
            "merge)", self.merge_threshold)

  def score(self, layer, obs, l, budget_BxK):
    valid = valid_slots(layer)
    protect = ((layer.pos >= 0) & (layer.pos < self.sinks)) | recent_mask(layer, obs.window_size)
    cand = valid & ~protect
    norm = minmax if self.normalise == "minmax" else rank_norm
    n_seen = jnp.maximum(obs.next_pos_B[:, None, None] - layer.pos, 1).astype(jnp.float32)
    g_raw = jnp.where(cand, obs.total[l].sum_BxKxS / n_seen, -jnp.inf)
    l_raw = jnp.where(cand, obs.window[l].sum_BxKxS, -jnp.inf)
    if self.pool > 1:
      g_raw, l_raw = pool(g_raw, self.pool, "max"), pool(l_raw, self.pool, "max")
    g, loc = norm(g_raw, cand), norm(l_raw, cand)
    return jnp.where(protect, PROTECT, jnp.maximum(g, loc))

  def plan(self, layer, obs, l, budget_BxK):
    score_BxKxS = self.score(layer, obs, l, budget_BxK)
    plan = top_plan(score_BxKxS, layer, budget_BxK)
    if self.merge_weight == "score":
      # protected slots score 1e30: weight them as the best candidate (1 after normalising)
      plan = plan.replace(weight_BxKxS=jnp.clip(score_BxKxS, 1e-6, 1.0))
    s = layer.capacity
    kn = layer.k.astype(jnp.float32)
    kn = kn / jnp.maximum(jnp.linalg.norm(kn, axis=-1, keepdims=True), 1e-12)
    kept = plan.dest_BxKxS < s
    lo, hi, _, _ = neighbours(plan, layer.pos)
    centres_BxKxS = jnp.take_along_axis(kn, plan.keep_BxKxS[..., None], axis=2)  # new order
    sim = lambda idx: jnp.sum(kn * jnp.take_along_axis(centres_BxKxS, idx[..., None], axis=2),
                              axis=-1)
    s_lo, s_hi = sim(lo), sim(hi)
    centre = jnp.where(s_lo >= s_hi, lo, hi)
    best_sim = jnp.maximum(s_lo, s_hi)
    merge = ~kept & valid_slots(layer) & (best_sim >= self.merge_threshold)
    return plan.replace(dest_BxKxS=jnp.where(kept, plan.dest_BxKxS, jnp.where(merge, centre, s)))
