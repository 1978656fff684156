"""Selections and the kernel layout of selected attention (TPU and GPU kernels).

A selection is a bool mask [B, K, S] over cache slots (``from_indices`` builds it from per-head
index lists, ``from_spans`` from per-head [start, end) spans such as SentenceKV's sentences).
The kernels visit only the cache blocks of ``block_s`` slots that hold a selected slot: a
block table per (row, kv head) - the ascending indices of those blocks, then the last one
repeated - and its count (paged attention's per-sequence page table, here per kv head). Within
a visited block the selection mask itself decides each slot.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from jaxtok_kernels import tiling
from jaxtok_kernels.tree_attention import layout as tree_layout


def validate_inputs(q, k_cache, v_cache, selected, k_new, v_new, block_mask) -> None:
  """Raise ValueError naming the argument and the expected shape for inconsistent inputs."""
  b, _, _, _, kv, s = tree_layout.validate_operands(q, k_cache, v_cache, k_new, v_new,
                                                    block_mask)
  if selected.shape != (b, kv, s):
    raise ValueError(f"selected_BxKxS must have shape [B, K, S] = {(b, kv, s)} (a mask of the "
                     f"chosen cache slots per row and kv head), got {selected.shape}")


def from_indices(idx_BxKxM, n_BxK, s: int):
  """bool[B, K, S]: slots idx[b, k, :n[b, k]] selected (entries past n, or outside [0, S),
  ignored)."""
  m = idx_BxKxM.shape[-1]
  live = (jnp.arange(m)[None, None, :] < n_BxK[..., None]) & (idx_BxKxM >= 0) & (idx_BxKxM < s)
  onehot = jax.nn.one_hot(jnp.where(live, idx_BxKxM, s), s + 1, dtype=jnp.int32)[..., :s]
  return onehot.sum(axis=-2) > 0


def from_spans(start_BxKxN, end_BxKxN, s: int):
  """bool[B, K, S]: slots in any span [start, end) of the row and kv head (empty spans,
  end <= start, select nothing)."""
  slot = jnp.arange(s)[None, None, None, :]
  inside = (slot >= start_BxKxN[..., None]) & (slot < end_BxKxN[..., None])
  return jnp.any(inside, axis=-2)


def block_table(selected_BxKxS, block_s: int):
  """(table i32[B, K, nb], count i32[B, K]): the blocks holding a selected slot, ascending,
  then the last one repeated (block 0 when none) so a kernel's index_map never moves past
  them."""
  b, kv, s = selected_BxKxS.shape
  nb = tiling.cdiv(s, block_s)
  sel = tiling.pad_axis(selected_BxKxS.astype(jnp.int32), 2, nb * block_s)
  used_BxKxNb = sel.reshape(b, kv, nb, block_s).max(axis=-1) > 0
  count = used_BxKxNb.sum(axis=-1).astype(jnp.int32)
  order = jnp.argsort(~used_BxKxNb, axis=-1, stable=True).astype(jnp.int32)  # used first
  j = jnp.minimum(jnp.arange(nb)[None, None, :], jnp.maximum(count - 1, 0)[..., None])
  return jnp.take_along_axis(order, j, axis=-1), count
