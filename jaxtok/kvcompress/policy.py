"""The policy base of KV-cache compression: scores, plans and the ``Policy`` protocol.

A policy is a frozen dataclass (static config, hashable, so it can close over a jit) with one
method most policies write, ``score(layer, obs, l, budget_BxK) -> f32[B, K, S]``: the score of
every slot of layer ``l``'s cache ``layer`` given the ``Observation`` (kvpress's
``ScorerPress``, here with statistics passed as arguments, never read from hooks). The shared
``plan`` keeps the top-scoring slots per (layer, row, kv head) up to that head's budget;
policies that merge (Elastic Cache, EMS) override ``plan`` to give every dropped slot a
destination (a kept slot, or the trash class: EMS's "zero class"); ``decode_plan`` is the plan
used while generating (default: ``plan``); ``allocate`` turns a requested ``Budget`` into the
one the policy uses (PyramidKV: a pyramid). ``jaxtok.kvcompress.apply`` applies plans. This
module never runs the model (``observe.py`` does).
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from jaxtok.cache import LayerKV
from jaxtok.config import require
from jaxtok.kvcompress.budget import Budget

if TYPE_CHECKING:  # observe.py runs the model; a policy only reads what it observed
  from jaxtok.kvcompress.observe import Observation

PROTECT = 1e30  # score of a slot that must be kept (sinks, windows)


# ---- plans -----------------------------------------------------------------------------------

@struct.dataclass
class LayerPlan:
  """What one layer keeps: ``keep[b, k, :n_keep[b, k]]`` are the kept slots in their new order;
  ``dest[b, k, j]`` is the new slot old slot j is folded into (a kept slot: its own new index;
  a merged slot: its centre's), or S (the capacity) for the trash class."""
  keep_BxKxS: Int[Array, "B K S"]
  n_keep_BxK: Int[Array, "B K"]
  dest_BxKxS: Int[Array, "B K S"]
  # Optional importance of each old slot in a merge: a merged slot's key/value is the mean
  # weighted by mass x weight (None: by mass, the number of tokens folded in). The mass that
  # is carried on stays the token count either way.
  weight_BxKxS: Float[Array, "B K S"] | None = None


def valid_slots(layer: LayerKV):
  return jnp.arange(layer.capacity)[None, None, :] < layer.length[..., None]


def top_plan(scores_BxKxS: Float[Array, "B K S"], layer: LayerKV,
             budget_BxK: Int[Array, "B K"]) -> LayerPlan:
  """Keeps the ``budget`` top-scoring valid slots of each (row, kv head), in slot order (so
  positions stay sorted); everything else goes to the trash class."""
  s = layer.capacity
  valid_BxKxS = valid_slots(layer)
  scores = jnp.where(valid_BxKxS, scores_BxKxS.astype(jnp.float32), -jnp.inf)
  n_keep_BxK = jnp.minimum(budget_BxK.astype(jnp.int32), layer.length)
  # Rank by score (stable: ties keep the earlier slot), select the first n_keep, then re-sort
  # the selected slot indices ascending.
  order_BxKxS = jnp.argsort(-scores, axis=-1, stable=True)
  rank_BxKxS = jnp.argsort(order_BxKxS, axis=-1)
  kept_BxKxS = rank_BxKxS < n_keep_BxK[..., None]
  return plan_from_mask(kept_BxKxS, n_keep_BxK, s)


def plan_from_mask(kept_BxKxS, n_keep_BxK, s: int) -> LayerPlan:
  slot_S = jnp.arange(s, dtype=jnp.int32)
  keep_BxKxS = jnp.sort(jnp.where(kept_BxKxS, slot_S[None, None, :], s), axis=-1)
  new_index_BxKxS = jnp.cumsum(kept_BxKxS, axis=-1, dtype=jnp.int32) - 1
  dest_BxKxS = jnp.where(kept_BxKxS, new_index_BxKxS, s)
  return LayerPlan(keep_BxKxS=jnp.minimum(keep_BxKxS, s - 1), n_keep_BxK=n_keep_BxK,
                   dest_BxKxS=dest_BxKxS)


def recent_mask(layer: LayerKV, n_BxK) -> jax.Array:
  """Slots among the last ``n`` valid ones of each (row, head)."""
  slot = jnp.arange(layer.capacity)[None, None, :]
  n_BxK = jnp.broadcast_to(jnp.asarray(n_BxK, jnp.int32), layer.length.shape)
  return (slot >= layer.length[..., None] - n_BxK[..., None]) & valid_slots(layer)


@dataclasses.dataclass(frozen=True)
class Policy:
  """Base: subclasses set ``name`` and write ``score`` (or override ``plan``)."""
  name = "policy"
  needs_window = False  # the policy reads obs.window (SnapKV-style); its budget must exceed it
  merges = True  # False: its plans only keep or drop (no slot folded into another); static
  headwise = False  # True: a head may keep up to its layer's whole budget (AdaKV), not its own

  def score(self, layer: LayerKV, obs: Observation, l: int,
            budget_BxK: Int[Array, "B K"]) -> Float[Array, "B K S"]:
    raise NotImplementedError(f"{type(self).__name__}.score")

  def plan(self, layer: LayerKV, obs: Observation, l: int,
           budget_BxK: Int[Array, "B K"]) -> LayerPlan:
    return top_plan(self.score(layer, obs, l, budget_BxK), layer, budget_BxK)

  def decode_plan(self, layer: LayerKV, obs: Observation, l: int,
                  budget_BxK: Int[Array, "B K"]) -> LayerPlan:
    """The plan used while generating (``jaxtok.kvcompress.compactor``); default: ``plan``."""
    return self.plan(layer, obs, l, budget_BxK)

  def allocate(self, budget: Budget, obs: Observation) -> Budget:
    """The per-(layer, head) budget this policy uses for a requested one (PyramidKV: a
    pyramid); checks it against the policy's own constraints."""
    if self.needs_window:
      require(budget.min() > obs.window_size, "budget",
              f"more tokens than the observation window ({obs.window_size}) for {self.name}",
              budget.min())
    return budget
