"""Operands shared by the merge kernels: (row, kv head) flattened, slots padded to the block."""
from __future__ import annotations

import jax.numpy as jnp

from jaxtok_kernels import tiling


def operands(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS, s_pad: int):
  """[BK, S_pad, Dh] keys and values, [BK, 1, S_pad] mass (0 on padding) and destination (the
  trash value s_pad on padding and for anything outside [0, S))."""
  b, k, s, dh = k_BxKxSxDh.shape
  bk = b * k
  dest = jnp.where((dest_BxKxS >= 0) & (dest_BxKxS < s), dest_BxKxS, s_pad).astype(jnp.int32)
  kf = tiling.pad_axis(k_BxKxSxDh.reshape(bk, s, dh), 1, s_pad)
  vf = tiling.pad_axis(v_BxKxSxDh.reshape(bk, s, dh), 1, s_pad)
  mf = tiling.pad_axis(mass_BxKxS.astype(jnp.float32).reshape(bk, 1, s), 2, s_pad)
  df = tiling.pad_axis(dest.reshape(bk, 1, s), 2, s_pad, value=s_pad)
  return kf, vf, mf, df


def block_ranges(dest_BKx1xSp, block: int, s_pad: int):
  """Smallest and largest real destination in every input block (i32[BK, n_blocks] each), so a
  kernel skips (output block, input block) pairs that cannot meet; empty blocks get (s_pad, -1)."""
  bk = dest_BKx1xSp.shape[0]
  d = dest_BKx1xSp.reshape(bk, -1, block)
  real = d < s_pad
  lo = jnp.min(jnp.where(real, d, s_pad), axis=-1).astype(jnp.int32)
  hi = jnp.max(jnp.where(real, d, -1), axis=-1).astype(jnp.int32)
  return lo, hi


def validate(k, v, mass, dest):
  if k.ndim != 4 or v.shape != k.shape:
    raise ValueError(f"k_BxKxSxDh, v_BxKxSxDh: expected equal [B, K, S, Dh] shapes, got "
                     f"{k.shape}, {v.shape}")
  if mass.shape != k.shape[:3] or dest.shape != k.shape[:3]:
    raise ValueError(f"mass_BxKxS, dest_BxKxS: expected shape {k.shape[:3]}, got {mass.shape}, "
                     f"{dest.shape}")
  if not jnp.issubdtype(dest.dtype, jnp.integer):
    raise ValueError(f"dest_BxKxS: expected integer destinations, got {dest.dtype}")
