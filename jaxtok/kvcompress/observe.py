"""What the prompt's forward saw: the attention statistics KV-compression policies score with.

An ``Observation`` holds, per layer, the attention mass every cache slot got from all queries
so far (``total``: H2O, Elastic Cache, EMS-global; its ``last`` the newest query's: TOVA) and
from the last ``window_size`` queries (``window``: SnapKV, EMS-local, SentenceKV), the token in
every slot (SentenceKV's sentence boundaries) and ``next_pos``. ``observe`` builds one with the
engine's ``extend`` (``return_stats``) in two blocks - the prompt minus its window, then the
window - so a sweep over policies and budgets costs one prefill: each policy compresses its own
copy (a policy at layer l never changes what layer l+1 saw at prefill). The statistics are
those of ``jaxtok.nn.attention.slot_stats`` (SnapKV arXiv 2404.14469 §3 for the window).
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from jaxtok.cache import KVCache
from jaxtok.config import require
from jaxtok.decode import Model, extend
from jaxtok.nn.attention import AttnStats


@struct.dataclass
class Observation:
  """Statistics of the queries seen so far, per layer, aligned with the cache slots."""
  total: tuple[AttnStats, ...]  # mass from every query so far (last: the last query)
  window: tuple[AttnStats, ...] | None  # mass from the last `window_size` queries
  tokens_BxS: Int[Array, "B S"] | None  # token id in each slot (fresh prefill: slot = position)
  next_pos_B: Int[Array, "B"]
  window_size: int = struct.field(pytree_node=False, default=0)
  prompt_len: int = struct.field(pytree_node=False, default=0)  # tokens observed (static)


def observe(model: Model, cache: KVCache, tokens_BxT: Int[Array, "B T"], window: int
            ) -> tuple[Float[Array, "B V"], KVCache, Observation]:
  """Prefills ``tokens`` (all rows full length) into a fresh ``cache`` in two ``extend`` blocks
  - the prompt minus its last ``window`` tokens, then the window - both returning statistics
  and committed. Returns (last logits, cache, observation). Traceable (``window`` static)."""
  b, t = tokens_BxT.shape
  require(0 < window < t, "window", f"in (0, prompt length {t})", window)
  s = cache.capacity
  require(t <= s, "tokens_BxT", f"at most the cache capacity {s} tokens", t)
  head = t - window
  pos_BxT = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
  out1, c = extend(model, cache, tokens_BxT[:, :head], pos_BxT[:, :head],
                   commit_B=jnp.full((b,), head, jnp.int32), return_stats=True, fresh=True,
                   logits_at_BxN=jnp.zeros((b, 1), jnp.int32))
  out2, c = extend(model, c, tokens_BxT[:, head:], pos_BxT[:, head:],
                   commit_B=jnp.full((b,), window, jnp.int32), return_stats=True,
                   logits_at_BxN=jnp.full((b, 1), window - 1, jnp.int32))
  total = tuple(AttnStats(sum_BxKxS=s1.sum_BxKxS + s2.sum_BxKxS, last_BxKxS=s2.last_BxKxS)
                for s1, s2 in zip(out1.stats, out2.stats))
  tokens_BxS = jnp.zeros((b, s), jnp.int32).at[:, :t].set(tokens_BxT.astype(jnp.int32))
  return out2.logits[:, 0], c, Observation(total=total, window=out2.stats, tokens_BxS=tokens_BxS,
                                           next_pos_B=c.next_pos, window_size=window,
                                           prompt_len=t)
