"""The policy base of KV-cache compression: budgets, observations, scores and plans.

A policy is a frozen dataclass (static config, hashable, so it can close over a jit) with one
method most policies write, ``score(layer, stats, obs, l) -> f32[B, K, S]`` (kvpress's
``ScorerPress``, here with statistics passed as arguments, never read from hooks). The shared
``plan`` keeps the top-scoring slots per (layer, row, kv head) up to that head's budget;
policies that merge (Elastic Cache, EMS) override ``plan`` to give every dropped slot a
destination (a kept slot, or the trash class: EMS's "zero class"). ``jaxtok.kvcompress.apply``
applies plans.

Budgets are explicit token counts per (layer, kv head) (``Budget``), built from a keep ratio,
a pyramid schedule (PyramidKV, arXiv 2406.02069) or given per head; a schedule that cannot be
honoured says so in ``Budget.fallback`` instead of silently changing (kvpress's PyramidKV
becomes SnapKV when a layer's budget drops below its window). Head-wise allocation that depends
on the scores (AdaKV) is a policy wrapper (``adakv.AdaKV``).

An ``Observation`` is what the prompt's forward saw: per layer the attention mass every slot got
from all queries so far (``total``, H2O/Elastic/EMS-global) and from the last ``window`` queries
(``window``: SnapKV/EMS-local/TOVA), the tokens by slot (SentenceKV's sentence boundaries) and
``next_pos``. ``observe`` builds one with a single prefill, so a sweep over policies and budgets
costs one prefill: each policy compresses its own copy (a policy at layer l never changes what
layer l+1 saw at prefill).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Float, Int

from jaxtok import cache as cache_lib
from jaxtok.cache import KVCache, LayerKV
from jaxtok.config import require
from jaxtok.nn.attention import AttnStats
from jaxtok.nn.transformer import forward

NEG = -1e30  # score of a slot that must never be kept (empty), finite so top-k ties stay sane
PROTECT = 1e30  # score of a slot that must be kept (sinks, windows)


# ---- budgets ---------------------------------------------------------------------------------

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


# ---- what the prompt's forward saw -----------------------------------------------------------

@struct.dataclass
class Observation:
  """Statistics of the queries seen so far, per layer, aligned with the cache slots."""
  total: tuple[AttnStats, ...]  # mass from every query so far (last: the last query)
  window: tuple[AttnStats, ...] | None  # mass from the last `window_size` queries
  tokens_BxS: Int[Array, "B S"] | None  # token id in each slot (fresh prefill: slot = position)
  next_pos_B: Int[Array, "B"]
  window_size: int = struct.field(pytree_node=False, default=0)
  prompt_len: int = struct.field(pytree_node=False, default=0)  # tokens observed (static)


def observe(graphdef, params, cache: KVCache, tokens_BxT: Int[Array, "B T"], window: int
            ) -> tuple[Float[Array, "B V"], KVCache, Observation]:
  """Prefills ``tokens`` (all rows full length) into a fresh ``cache`` in two forwards - the
  prompt minus its last ``window`` tokens, then the window - both returning statistics, and
  commits them. Returns (last logits, cache, observation). Traceable (jit it with graphdef and
  window static)."""
  b, t = tokens_BxT.shape
  require(0 < window < t, "window", f"in (0, prompt length {t})", window)
  s = cache.capacity
  require(t <= s, "tokens_BxT", f"at most the cache capacity {s} tokens", t)
  head = t - window
  pos_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  out1 = forward(graphdef, params, tokens_BxT[:, :head], pos_BxT[:, :head], cache=cache,
                 fresh_cache=True, return_stats=True, logits_at_BxN=jnp.zeros((b, 1), jnp.int32))
  c = cache_lib.commit(out1.cache, jnp.full((b,), head, jnp.int32))
  out2 = forward(graphdef, params, tokens_BxT[:, head:], pos_BxT[:, head:], cache=c,
                 return_stats=True, logits_at_BxN=jnp.full((b, 1), window - 1, jnp.int32))
  c = cache_lib.commit(out2.cache, jnp.full((b,), window, jnp.int32))
  total = tuple(AttnStats(sum_BxKxS=s1.sum_BxKxS + s2.sum_BxKxS, last_BxKxS=s2.last_BxKxS)
                for s1, s2 in zip(out1.stats, out2.stats))
  tokens_BxS = jnp.zeros((b, s), jnp.int32).at[:, :t].set(tokens_BxT.astype(jnp.int32))
  return out2.logits[:, 0], c, Observation(total=total, window=out2.stats, tokens_BxS=tokens_BxS,
                                           next_pos_B=c.next_pos, window_size=window,
                                           prompt_len=t)


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
  keep_BxKxS = jnp.sort(jnp.where(kept_BxKxS, slot_S, s), axis=-1)
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

  def score(self, layer: LayerKV, obs: Observation, l: int,
            budget_BxK: Int[Array, "B K"]) -> Float[Array, "B K S"]:
    raise NotImplementedError(f"{type(self).__name__}.score")

  def plan(self, layer: LayerKV, obs: Observation, l: int,
           budget_BxK: Int[Array, "B K"]) -> LayerPlan:
    return top_plan(self.score(layer, obs, l, budget_BxK), layer, budget_BxK)

  def decode_plan(self, layer: LayerKV, obs: Observation, l: int,
                  budget_BxK: Int[Array, "B K"]) -> LayerPlan:
    """The plan used while generating (``jaxtok.kvcompress.decoding``); default: ``plan``."""
    return self.plan(layer, obs, l, budget_BxK)

  def allocate(self, budget: Budget, obs: Observation) -> Budget:
    """The per-(layer, head) budget this policy uses for a requested one (PyramidKV: a
    pyramid); checks it against the policy's own constraints."""
    if self.needs_window:
      require(budget.min() > obs.window_size, "budget",
              f"more tokens than the observation window ({obs.window_size}) for {self.name}",
              budget.min())
    return budget
