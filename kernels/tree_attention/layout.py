"""Input validation and the kernel layout of tree attention (shared by the TPU and GPU kernels).

The kernels fold the G = H / K query heads that share one kv head into the row axis (rows
r = g * Tp + t, Tp = T padded to the target's tile), so one grid program streams a kv head's
cache blocks once for all of its query heads (the GQA trick of the FlashDecoding / paged
attention kernels). The tree mask is repeated per folded head so each row reads its own mask
row. The cache arrives kv-head-major, [B, K, S, Dh] (jaxtok.cache), so a kv head's cache block
is a (block_s, Dh) tile of the array as stored: the kernels read it in place, never reshaped,
transposed or copied (a reshape that changes the last two dims changes the TPU tiled layout,
and XLA would copy the whole cache every step to realise it). Only the small per-call inputs
(q, the T new keys/values, the mask) are rearranged here.
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxtok_kernels import tiling, validate

DEFAULT_BLOCK_R = 64  # folded query rows per Triton program


def validate_operands(q, k_cache, v_cache, k_new, v_new, block_mask):
  """The checks every attention over a kv-head-major cache needs (queries, cache, new block,
  block mask); returns (B, T, H, Dh, K, S). ValueError names the argument."""
  if q.ndim != 4:
    raise ValueError(f"q_BxTxHxDh must have rank 4 [B, T, H, Dh], got shape {q.shape}")
  b, t, h, dh = q.shape
  if k_cache.ndim != 4 or k_cache.shape[0] != b or k_cache.shape[3] != dh:
    raise ValueError(f"k_cache_BxKxSxDh must have shape [B={b}, K, S, Dh={dh}] (kv-head-major), "
                     f"got {k_cache.shape}")
  kv, s = k_cache.shape[1], k_cache.shape[2]
  if v_cache.shape != k_cache.shape:
    raise ValueError(f"v_cache_BxKxSxDh must have the shape of k_cache [B, K, S, Dh] = "
                     f"{k_cache.shape}, got {v_cache.shape}")
  if kv < 1 or h % kv:
    raise ValueError(f"query heads H={h} must be a multiple of the kv heads K={kv} (GQA); "
                     f"q_BxTxHxDh {q.shape}, k_cache_BxKxSxDh {k_cache.shape}")
  for name, x in (("k_new_BxTxKxDh", k_new), ("v_new_BxTxKxDh", v_new)):
    if x.shape != (b, t, kv, dh):
      raise ValueError(f"{name} must have shape [B, T, K, Dh] = {(b, t, kv, dh)}, got "
                       f"{x.shape}")
  if not validate.broadcastable(block_mask.shape, (b, t, t)):
    raise ValueError(f"block_mask_BxTxT must have shape [B, T, T] = {(b, t, t)} (or broadcast "
                     f"to it), got {block_mask.shape}")
  return b, t, h, dh, kv, s


def validate_inputs(q, k_cache, v_cache, cache_len, k_new, v_new, block_mask) -> None:
  """Raise ValueError naming the argument and expected shape for inconsistent inputs."""
  b, _, _, _, kv, s = validate_operands(q, k_cache, v_cache, k_new, v_new, block_mask)
  if cache_len.shape != (b, kv):
    raise ValueError(f"cache_len_BxK must have shape [B, K] = {(b, kv)} (a length per row and "
                     f"kv head), got {cache_len.shape}")
  if not jnp.issubdtype(cache_len.dtype, jnp.integer):
    raise ValueError(f"cache_len_BxK must be an integer array, got dtype {cache_len.dtype}")
  lens = validate.concrete_int_array(cache_len)
  if lens is not None and lens.size and (lens.min() < 0 or lens.max() > s):
    raise ValueError(f"cache_len_BxK must lie in [0, S={s}], got {lens.tolist()}")


def fold_queries(q_BxTxHxDh, kv_heads: int, t_pad: int):
  """[B, T, H, Dh] -> [B, K, G * Tp, Dh] with row r = g * Tp + t (padded rows are zero)."""
  b, t, h, dh = q_BxTxHxDh.shape
  g = h // kv_heads
  q = tiling.pad_axis(q_BxTxHxDh, 1, t_pad)
  q_BxKxGxTpxDh = q.reshape(b, t_pad, kv_heads, g, dh).transpose(0, 2, 3, 1, 4)
  return q_BxKxGxTpxDh.reshape(b, kv_heads, g * t_pad, dh)


def unfold(o_BxKxRxDh, t: int, t_pad: int):
  """[B, K, G * Tp, Dh] -> [B, T, H, Dh], dropping the padded rows."""
  b, kv, r, dh = o_BxKxRxDh.shape
  g = r // t_pad
  o = o_BxKxRxDh.reshape(b, kv, g, t_pad, dh).transpose(0, 3, 1, 2, 4)
  return o.reshape(b, t_pad, kv * g, dh)[:, :t]


def block_keys(k_new_BxTxKxDh, t_pad: int, dtype):
  """[B, T, K, Dh] -> [B, K, Tp, Dh] in the cache dtype (as the reference casts them)."""
  k = tiling.pad_axis(k_new_BxTxKxDh.astype(dtype), 1, t_pad)
  return k.transpose(0, 2, 1, 3)


def row_mask(block_mask_BxTxT, groups: int, t_pad: int, cols: int):
  """[B, T, T] bool -> [B, G * Tp, cols] int32; padded rows and columns are invisible.

  int32 because Mosaic vectors hold 16/32-bit integers, not i1/i8.
  """
  m = tiling.pad_axis(tiling.pad_axis(block_mask_BxTxT.astype(jnp.int32), 1, t_pad), 2, cols)
  return jnp.tile(m, (1, groups, 1))


def clamp_len(cache_len_BxK, s: int):
  """cache_len as int32 clipped to [0, S] (traced values cannot be range-checked)."""
  return jnp.clip(cache_len_BxK.astype(jnp.int32), 0, s)


def unfold_lse(lse_BxKxR, t: int, t_pad: int):
  """Residuals [B, K, G * Tp] -> [B, T, H], dropping the padded rows."""
  b, kv, r = lse_BxKxR.shape
  g = r // t_pad
  return lse_BxKxR.reshape(b, kv, g, t_pad).transpose(0, 3, 1, 2).reshape(b, t_pad, kv * g)[:, :t]


def kernel_operands(q_BxTxHxDh, k_cache_BxKxSxDh, k_new_BxTxKxDh, v_new_BxTxKxDh,
                    block_mask_BxTxT, t_pad: int):
  """What the attention kernels over a kv-head-major cache take besides the cache: the folded
  queries, the new keys/values blocked in the cache dtype and the row mask (from a block mask
  broadcastable to [B, T, T]): (q_BxKxRxDh, kn_BxKxTpxDh, vn_BxKxTpxDh, mask_BxRxTp)."""
  b, t, h, _ = q_BxTxHxDh.shape
  kv = k_cache_BxKxSxDh.shape[1]
  mask_BxTxT = jnp.broadcast_to(block_mask_BxTxT, (b, t, t))
  return (fold_queries(q_BxTxHxDh, kv, t_pad),
          block_keys(k_new_BxTxKxDh, t_pad, k_cache_BxKxSxDh.dtype),
          block_keys(v_new_BxTxKxDh, t_pad, k_cache_BxKxSxDh.dtype),
          row_mask(mask_BxTxT, h // kv, t_pad, t_pad))


def unfold_outputs(out, t: int, t_pad: int, return_residuals: bool):
  """The kernel's out [B, K, G * Tp, Dh] as [B, T, H, Dh], or with residuals (out, lse) as
  (out, lse [B, T, H]). A lane-replicated lse [B, K, G * Tp, lanes] (TPU) is read at lane 0."""
  if not return_residuals:
    return unfold(out, t, t_pad)
  o, lse = out
  if lse.ndim == 4:
    lse = lse[..., 0]
  return unfold(o, t, t_pad), unfold_lse(lse, t, t_pad)


def triton_rows(t: int, groups: int, block_r: int | None):
  """(Tp, block_r) of the Triton kernels: T padded to a power of two >= 16, and a power-of-two
  block of folded rows (None: the largest up to DEFAULT_BLOCK_R) that divides G * Tp."""
  t_pad = tiling.next_pow2(max(t, tiling.TRITON_MIN_DOT))
  rows = groups * t_pad
  # Any group size G works: rows = G * Tp has the power-of-two factor Tp * (G & -G) >= 16, so a
  # power-of-two row block divides it (SmolLM2's G = 3 gets blocks of Tp rows).
  if block_r is None:
    block_r = min(t_pad * (groups & -groups), DEFAULT_BLOCK_R)
  if rows % block_r:
    raise tiling.BlockSizeError(f"block_r = {block_r} must divide the folded rows "
                                f"G*Tp = {rows}")
  return t_pad, block_r
