"""Random tree-attention operands in the layouts the op takes (tests, benchmark, device checks).

The cache is kv-head-major [B, K, S, Dh], as jaxtok.cache stores it; the new block is
[B, T, K, Dh], as the projections produce it.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def random_inputs(b: int, t: int, h: int, k: int, s: int, dh: int, dtype=jnp.float32,
                  seed: int = 0, lens=None, mask_p: float | None = 0.5):
  """(q, k_cache, v_cache, cache_len, k_new, v_new, block_mask) with normal entries.

  lens: cache lengths per row [B] (every kv head alike) or per (row, kv head) [B, K]
  (default: uniform in [0, S] per row and head). mask_p: probability that a block
  mask entry is visible; None gives a causal (chain) mask.
  """
  keys = jax.random.split(jax.random.key(seed), 6)
  q = jax.random.normal(keys[0], (b, t, h, dh), dtype)
  k_cache = jax.random.normal(keys[1], (b, k, s, dh), dtype)
  v_cache = jax.random.normal(keys[2], (b, k, s, dh), dtype)
  k_new = jax.random.normal(keys[3], (b, t, k, dh), dtype)
  v_new = jax.random.normal(keys[4], (b, t, k, dh), dtype)
  if mask_p is None:
    mask = jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (b, t, t))
  else:
    mask = jax.random.bernoulli(keys[5], mask_p, (b, t, t))
  if lens is None:
    lens = np.random.RandomState(seed).randint(0, s + 1, size=(b, k))
  lens = np.asarray(lens)
  lens_BxK = np.broadcast_to(lens[:, None], (b, k)) if lens.ndim == 1 else lens
  return q, k_cache, v_cache, jnp.asarray(lens_BxK, jnp.int32), k_new, v_new, mask
