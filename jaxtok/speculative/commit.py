"""Committing the accepted path of a verified tree into the KV cache, on device.

The verify forward wrote the N tree nodes at slots ``length .. length + N`` (uncommitted) and
returned their K/V (``out.kv``). The accepted path (root, then n_acc drafted nodes) is scattered
over those slots in tree order; ``commit_path`` gathers the path's K/V from ``out.kv`` and writes
them into consecutive slots from the pre-verify ``length`` (``jaxtok.cache.write_block``), with
positions ``next_pos + d``, then commits ``n_acc + 1`` tokens (``jaxtok.cache.commit``). The
rejected nodes are left in scratch slots past ``length``, invisible, and overwritten by the next
step: rollback costs nothing (kv_and_tree.md §B.0 "KV commit"; TR and Medusa gather-copy the
same way).

Every row writes N slots (a static shape); slots past its path length get copies of the last
path node and stay uncommitted. The loop commits only the emitted tokens (none for a finished
row), so the cache always holds a row's prompt and emitted tokens but the last.
"""
from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float

from jaxtok import cache as cache_lib
from jaxtok.cache import KVCache
from jaxtok.speculative.verify import Accept


def commit_path(cache: KVCache, kv: tuple[tuple[Float[Array, "B N K Dh"], ...], ...],
                accept: Accept, *, n_keep_B=None) -> KVCache:
  """The cache with the accepted path's K/V in consecutive slots, committed.

  ``cache``: the verify forward's ``out.cache`` (lengths and next_pos still the pre-verify
  ones); ``kv``: its ``out.kv``; ``n_keep_B``: path tokens to commit per row (default the
  whole path, n_acc + 1; fewer where the output was cut, 0 for a finished row).
  """
  path_BxN = accept.path_BxN
  n = path_BxN.shape[1]
  pos_BxN = cache.next_pos[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]
  layers = []
  for layer, (k_BxNxKxDh, v_BxNxKxDh) in zip(cache.layers, kv):
    idx = path_BxN[:, :, None, None]
    k_path = jnp.take_along_axis(k_BxNxKxDh, idx, axis=1)
    v_path = jnp.take_along_axis(v_BxNxKxDh, idx, axis=1)
    layers.append(cache_lib.write_block(layer, k_path, v_path, pos_BxN, start_BxK=layer.length))
  n_keep_B = accept.n_acc_B + 1 if n_keep_B is None else n_keep_B
  return cache_lib.commit(cache.replace(layers=tuple(layers)), n_keep_B)

