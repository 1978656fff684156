"""Compression while generating: a fixed KV budget kept as the sequence grows, as a
``jaxtok.decode.Compactor`` of the one decode loop (so compressed decoding samples and stops
at EOS like any decoding).

``start`` observes the prompt (``observe``, with the compactor's ``window``: the last ``window``
prompt tokens are the queries SnapKV-style policies vote with - kvpress keeps ``window_size`` on
the press the same way), compresses it once to the budget with the policy's prefill ``plan``
and resizes the cache to ``capacity = budget + every`` slots per (layer, row, kv head) (AdaKV's
head-wise budgets: a head may hold its layer's whole budget, so ``kv_heads x budget + every``).
Every decode step's attention statistics are folded into the loop's ``aux``
(``CompactState``): H2O's accumulated attention ``acc`` (carried with the slots: summed into a
slot's destination when it moves or merges) and the newest step's statistics ``last``. Every
``every`` tokens ``compact`` plans with the policy's ``decode_plan`` and compacts back to the
budget, freeing the slots the new tokens used (memory O(budget), never O(sequence)).

What a decode-time score reads (``decode_observation``): ``total`` = the prompt's and every
generated query's accumulated mass (H2O, Elastic Cache, EMS-global), its ``last`` and
``window`` = the newest query's statistics only, with ``window_size = 1``. So TOVA reads the
newest query (its rule); SnapKV-style policies (SnapKV, PyramidKV, EMS-local, SentenceKV) score
by the newest query's attention, pooled, protecting only the newest slot - close to TOVA, not
the prompt's W-query vote (tests/kvcompress/test_decoding_pie.py pins it).

``every = 1`` is the papers' rule (evict one token per step, H2O arXiv 2306.14048 §3, TOVA
arXiv 2401.06104 §3); larger values amortise the compaction (kvpress's ``DecodingPress``
compresses every N steps). Elastic Cache (arXiv 2407.18121) evicts at its fixed offset.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from jaxtok.cache import KVCache, init_cache, resize, resize_slots
from jaxtok.config import require
from jaxtok.decode import Model
from jaxtok.kvcompress.apply import compress
from jaxtok.kvcompress.budget import uniform
from jaxtok.kvcompress.observe import Observation, observe
from jaxtok.kvcompress.policy import Policy
from jaxtok.nn.attention import AttnStats
from jaxtok.nn.transformer import Output

DEFAULT_WINDOW = 32  # prompt queries SnapKV-style policies vote with (SentenceKV's LongBench)


@struct.dataclass
class CompactState:
  """The decode loop's ``aux`` under compression, per layer aligned with the cache slots:
  acc: attention mass each slot got from every query so far; mass: original tokens folded into
  each slot; last: the newest step's statistics; prefill_kept_fraction: kept / valid slots of
  the prompt's compression."""
  acc: tuple[Float[Array, "B K S"], ...]
  mass: tuple[Float[Array, "B K S"], ...]
  last: tuple[AttnStats, ...]
  prefill_kept_fraction: Float[Array, ""]


@dataclasses.dataclass(frozen=True)
class KVCompactor:
  """A ``jaxtok.decode.Compactor``: ``policy`` at ``budget_tokens`` per (layer, kv head),
  compacting every ``every`` generated tokens; ``window``: the prompt's observation window
  (None: ``min(32, budget // 2)`` for policies that read it, else 1; cut to the prompt length
  - 1).
  Prompts must be full-length rows (``observe`` reads each row's last ``window`` tokens)."""
  policy: Policy
  budget_tokens: int
  every: int = 1
  window: int | None = None
  needs_stats = True

  def __post_init__(self):
    require(isinstance(self.policy, Policy), "policy", "a jaxtok.kvcompress.Policy "
            "(kvcompress.make(name))", type(self.policy).__name__)
    for name in ("budget_tokens", "every"):
      v = getattr(self, name)
      require(isinstance(v, int) and not isinstance(v, bool) and v > 0, name,
              "a positive int", v)
    if self.window is not None:
      require(isinstance(self.window, int) and self.window > 0, "window", "a positive int",
              self.window)
      if self.policy.needs_window:
        require(self.window < self.budget_tokens, "window", f"below budget_tokens "
                f"({self.budget_tokens}): {self.policy.name} always keeps its window",
                self.window)

  def prompt_window(self, prompt_len: int) -> int:
    """The observation window used for a prompt of ``prompt_len`` tokens (static)."""
    require(prompt_len >= 2, "prompt_BxT", "at least 2 tokens (an observation window and "
            "one token before it)", prompt_len)
    w = self.window
    if w is None:  # policies that never read the window observe the prompt's last token only
      w = max(1, min(DEFAULT_WINDOW, self.budget_tokens // 2)) if self.policy.needs_window else 1
    return min(w, prompt_len - 1)

  def capacity(self, kv_heads: int) -> int:
    """Slots per (layer, row, kv head) of the decode cache."""
    return self.budget_tokens * (kv_heads if self.policy.headwise else 1) + self.every

  def start(self, model: Model, cache: KVCache, prompt_BxT: Int[Array, "B T"],
            prompt_len_B: Int[Array, "B"]) -> tuple[Float[Array, "B V"], KVCache, CompactState]:
    """Observes the prompt, compresses it to the budget and resizes to ``capacity`` (``cache``
    only fixes the batch: the compressed cache has its own capacity)."""
    del prompt_len_B  # full-length rows (checked by kvcompress.generate / score)
    b, t = prompt_BxT.shape
    cfg = model.cfg
    logits_BxV, full, obs = observe(model, init_cache(cfg, cache.batch, t), prompt_BxT,
                                    self.prompt_window(t))
    res = compress(full, self.policy, uniform(cfg.n_layers, cfg.kv_heads,
                                              min(self.budget_tokens, t)), obs,
                   extra=tuple((s.sum_BxKxS,) for s in obs.total))
    cap = self.capacity(cfg.kv_heads)
    zeros = jnp.zeros((b, cfg.kv_heads, cap), jnp.float32)
    aux = CompactState(acc=tuple(resize_slots(e[0], cap) for e in res.extra),
                       mass=tuple(resize_slots(m, cap) for m in res.mass),
                       last=tuple(AttnStats(zeros, zeros) for _ in range(cfg.n_layers)),
                       prefill_kept_fraction=res.kept_fraction)
    return logits_BxV, resize(res.cache, cap), aux

  def observe(self, aux: CompactState, out: Output, cache: KVCache) -> CompactState:
    return aux.replace(acc=tuple(a + s.sum_BxKxS for a, s in zip(aux.acc, out.stats)),
                       last=tuple(out.stats))

  def decode_observation(self, cache: KVCache, aux: CompactState) -> Observation:
    """What ``decode_plan`` reads while generating (see the module docstring)."""
    return Observation(total=tuple(AttnStats(a, st.last_BxKxS) for a, st in zip(aux.acc,
                                                                                aux.last)),
                       window=aux.last, tokens_BxS=None, next_pos_B=cache.next_pos,
                       window_size=1)

  def compact(self, cache: KVCache, aux: CompactState) -> tuple[KVCache, CompactState]:
    s = cache.capacity
    # a slot written since the last compaction holds one token
    mass = tuple(jnp.where(jnp.arange(s)[None, None, :] < l.length[..., None], jnp.maximum(m, 1.0), 0.0)
                 for m, l in zip(aux.mass, cache.layers))
    cfg_layers, kh = len(cache.layers), cache.layers[0].length.shape[1]
    res = compress(cache, self.policy, uniform(cfg_layers, kh, self.budget_tokens),
                   self.decode_observation(cache, aux), mass=mass,
                   extra=tuple((a,) for a in aux.acc), decoding=True)
    return res.cache, aux.replace(acc=tuple(e[0] for e in res.extra), mass=res.mass)


def compactor(policy: Policy | str, *, budget_tokens: int, every: int = 1,
              window: int | None = None, **policy_fields) -> KVCompactor:
  """The compactor to pass to ``jaxtok.decode.generate(..., compactor=...)``: ``policy`` a
  Policy or a name for ``kvcompress.make`` (with ``policy_fields``)."""
  if isinstance(policy, str):
    from jaxtok.kvcompress import make  # the registry imports every policy module
    policy = make(policy, **policy_fields)
  elif policy_fields:
    raise ValueError(f"policy_fields: only with a policy name, got {sorted(policy_fields)}")
  return KVCompactor(policy=policy, budget_tokens=budget_tokens, every=every, window=window)
