"""Applying compression plans to a real cache (kv_and_tree.md §E ``apply_plan``).

Every (layer, row, kv head) keeps the slots its plan lists (compaction through
``jaxtok.cache.keep``: the kept tokens keep their stored positions, ``next_pos`` is unchanged)
and folds every merged slot into its destination with a mass-weighted mean of keys and values
(Elastic Cache arXiv 2407.18121 §3.3; EMS arXiv 2412.08521 §3), where a slot's mass is the
number of original tokens already folded into it; slots sent to the trash class (EMS's zero
class, index S) are dropped. One scatter-add does all heads at once whatever each head evicts
or merges.

``compress`` runs a policy over every layer and reports the fraction of valid slots actually
kept; ``jaxtok.cache.resize`` gives the compressed cache a smaller capacity, so the memory is
really freed.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float

from jaxtok_kernels.kvcompress import mass_sums, merge_slots

from jaxtok import cache as cache_lib
from jaxtok.cache import KVCache, LayerKV
from jaxtok.config import require
from jaxtok.kvcompress.budget import Budget, uniform
from jaxtok.kvcompress.observe import Observation
from jaxtok.kvcompress.policy import LayerPlan, Policy


def merge_sums(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS):
  """(sum mass*k, sum mass*v, sum mass) per destination: the plan-application op
  (jaxtok_kernels.kvcompress: Pallas on TPU/GPU, O(S Dh) segment sums elsewhere)."""
  return merge_slots(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS)


def apply_layer(layer: LayerKV, plan: LayerPlan, mass_BxKxS, extra=(), *, merges: bool = True,
                capacity: int | None = None):
  """One layer: (compacted + merged layer, its new mass, its new extra per-slot sums).
  ``merges=False`` (static: the plan folds nothing, every slot is kept or dropped) skips the
  merge sums; ``capacity`` (static, <= S) gives the result that many slots directly."""
  s = layer.capacity
  valid_BxKxS = jnp.arange(s)[None, None, :] < layer.length[..., None]
  mass_BxKxS = jnp.where(valid_BxKxS, mass_BxKxS, 0.0)
  dest_BxKxS = jnp.where(valid_BxKxS, plan.dest_BxKxS, s)
  if capacity is not None or not merges:
    cap = s if capacity is None else capacity
    if cap > s:
      raise ValueError(f"capacity: expected at most the cache capacity {s}, got {cap}")
    compact = cache_lib.keep_layer(layer, plan.keep_BxKxS, plan.n_keep_BxK, cap)
    live_BxKxM = jnp.arange(cap)[None, None, :] < compact.length[..., None]
    if not merges:
      out_mass = jnp.where(live_BxKxM, jnp.take_along_axis(
          mass_BxKxS, plan.keep_BxKxS[:, :, :cap], axis=2), 0.0)
      out_extra = tuple(jnp.where(live_BxKxM, jnp.take_along_axis(
          jnp.where(valid_BxKxS, e, 0.0), plan.keep_BxKxS[:, :, :cap], axis=2), 0.0)
          for e in extra)
      return compact, out_mass, out_extra
    full, m, ex = apply_layer(layer, plan, mass_BxKxS, extra)
    return (full.replace(k=full.k[:, :, :cap], v=full.v[:, :, :cap], pos=full.pos[:, :, :cap],
                         length=jnp.minimum(full.length, cap)), m[:, :, :cap],
            tuple(e[:, :, :cap] for e in ex))
  compact = cache_lib.keep_layer(layer, plan.keep_BxKxS, plan.n_keep_BxK)
  if plan.weight_BxKxS is None:
    k_sum, v_sum, m_new = merge_sums(layer.k, layer.v, mass_BxKxS, dest_BxKxS)
    w_new = m_new
  else:
    w_BxKxS = mass_BxKxS * jnp.maximum(plan.weight_BxKxS.astype(jnp.float32), 0.0)
    k_sum, v_sum, w_new = merge_sums(layer.k, layer.v, w_BxKxS, dest_BxKxS)
    m_new = mass_sums(mass_BxKxS, dest_BxKxS)
  # A destination that received nothing but its own token keeps its exact value (the division
  # m*x/m can round); only real merges are recomputed as means.
  own_mass_BxKxS = jnp.take_along_axis(mass_BxKxS, plan.keep_BxKxS, axis=2)
  merged_BxKxS = ((m_new != own_mass_BxKxS) & (jnp.arange(s)[None, None, :] < compact.length[..., None])
                  & (w_new > 0))
  denom = jnp.maximum(w_new, 1e-30)[..., None]
  k = jnp.where(merged_BxKxS[..., None], (k_sum / denom).astype(layer.k.dtype), compact.k)
  v = jnp.where(merged_BxKxS[..., None], (v_sum / denom).astype(layer.v.dtype), compact.v)
  live_BxKxS = jnp.arange(s)[None, None, :] < compact.length[..., None]
  out_mass = jnp.where(live_BxKxS, m_new, 0.0)
  out_extra = tuple(jnp.where(live_BxKxS, mass_sums(jnp.where(valid_BxKxS, e, 0.0),
                                                    dest_BxKxS), 0.0) for e in extra)
  return compact.replace(k=k, v=v), out_mass, out_extra


def apply_plans(cache: KVCache, plans: tuple[LayerPlan, ...], mass=None, extra=None, *,
                merges: bool = True, capacity: int | None = None):
  """Applies one plan per layer. ``mass``: per-layer f32[B, K, S] (None: every slot is one
  token); ``extra``: per-layer tuples of per-slot statistics summed into their destination;
  ``merges`` / ``capacity``: as ``apply_layer``. Returns (cache, mass, extra)."""
  n = len(cache.layers)
  if len(plans) != n:
    raise ValueError(f"plans: expected one per layer ({n}), got {len(plans)}")
  mass = tuple(jnp.ones(l.pos.shape, jnp.float32) for l in cache.layers) if mass is None else mass
  extra = tuple(() for _ in range(n)) if extra is None else extra
  layers, masses, extras = [], [], []
  for layer, plan, m, e in zip(cache.layers, plans, mass, extra):
    nl, nm, ne = apply_layer(layer, plan, m, e, merges=merges, capacity=capacity)
    layers.append(nl), masses.append(nm), extras.append(ne)
  return cache.replace(layers=tuple(layers)), tuple(masses), tuple(extras)


@struct.dataclass
class Result:
  cache: KVCache
  mass: tuple  # per layer f32[B, K, S]: original tokens folded into each slot
  kept_fraction: jax.Array  # f32[]: kept slots / valid slots before, over layers, rows, heads
  extra: tuple = ()


def budget_arrays(budget: Budget, batch: int):
  a = budget.array
  return tuple(jnp.broadcast_to(jnp.asarray(a[l]), (batch, a.shape[1])) for l in range(len(a)))


def compress(cache: KVCache, policy: Policy, budget: Budget, obs: Observation, *, mass=None,
             extra=None, decoding: bool = False, capacity: int | None = None) -> Result:
  """Plans every layer with ``policy`` for ``budget`` (after ``policy.allocate``) and applies
  the plans. Traceable: close over policy and budget (static) under jit, or allocate on the
  host and pass the arrays to ``compress_arrays`` (one compile for every budget). The budget's
  ``fallback`` notes are host-side: read them from ``policy.allocate(budget, obs)``."""
  budget.check(len(cache.layers), cache.layers[0].length.shape[1], cache.capacity)
  budget = policy.allocate(budget, obs)
  if capacity is not None:
    require(capacity >= int(budget.array.max()), "capacity", "at least the largest per-head "
            f"budget ({int(budget.array.max())})", capacity)
  return compress_arrays(cache, policy, budget_arrays(budget, cache.batch), obs, mass=mass,
                         extra=extra, decoding=decoding, capacity=capacity)


def compress_arrays(cache: KVCache, policy: Policy, budget_per_layer, obs: Observation, *,
                    mass=None, extra=None, decoding: bool = False,
                    capacity: int | None = None) -> Result:
  """``compress`` with the budget as data: per layer i32[B, K] (already allocated).
  ``capacity`` (static): the compressed cache gets that many slots straight away (the memory
  is freed without a full-size intermediate; it must hold every head's kept slots - AdaKV's
  head-wise budgets can exceed the uniform one). Policies that never merge (``merges`` False)
  skip the merge sums."""
  planner = policy.decode_plan if decoding else policy.plan
  plans = tuple(planner(layer, obs, l, budget_per_layer[l])
                for l, layer in enumerate(cache.layers))
  before = sum(jnp.sum(l.length) for l in cache.layers)
  new, masses, extras = apply_plans(cache, plans, mass, extra, merges=policy.merges,
                                    capacity=capacity)
  after = sum(jnp.sum(l.length) for l in new.layers)
  return Result(cache=new, mass=masses, kept_fraction=after / jnp.maximum(before, 1),
                extra=extras)


_compress_jit = jax.jit(compress_arrays, static_argnums=1, static_argnames=("capacity",))


def compress_tokens(cache: KVCache, policy: Policy, tokens: int, obs: Observation, *,
                    capacity: int | None = None) -> tuple[Result, tuple[str, ...]]:
  """``tokens`` per (layer, kv head), allocated by the policy on the host, applied by one jitted
  ``compress_arrays`` per (policy, shapes) whatever the budget (it travels as data; the
  observation's static ``prompt_len`` is zeroed, as only allocation reads it). Returns (the
  Result, the budget's fallback notes); raises ConfigError if the policy cannot honour it."""
  budget = policy.allocate(uniform(len(cache.layers), cache.layers[0].length.shape[1], tokens),
                           obs)
  res = _compress_jit(cache, policy, budget_arrays(budget, cache.batch),
                      obs.replace(prompt_len=0), capacity=capacity)
  return res, budget.fallback


def cache_bytes(cache: KVCache) -> int:
  return sum(l.k.nbytes + l.v.nbytes + l.pos.nbytes + l.length.nbytes for l in cache.layers)
