"""Attention statistics per cache slot - Pallas GPU (Triton) kernel.

Same algorithm as the TPU kernel (p = exp(q.k / sqrt(Dh) - lse) from the forward's residual,
summed over queries; kv_and_tree.md K2), laid out for a GPU: one program per (row, kv head,
key block) loads its key block once and loops (``fori_loop``) over the query blocks that can
see it - a dynamic lower bound, so the causal triangle before the block is never loaded - for
each of the G query heads of the kv head. Triton needs power-of-two sizes >= 16: block_t and
block_s are powers of two and Dh must be one (others raise NotImplementedError; the dispatcher
then uses the reference unless ``implementation="pallas"`` was asked for).
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from jaxtok_kernels import tiling
from jaxtok_kernels.attn_stats import layout


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuConfig:
  block_t: int = 64
  block_s: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    tiling.validate_pow2("GpuConfig.block_t", self.block_t, tiling.TRITON_MIN_DOT)
    tiling.validate_pow2("GpuConfig.block_s", self.block_s, tiling.TRITON_MIN_DOT)


def _kernel(start_ref, last_ref, q_ref, lse_ref, k_ref, sum_ref, last_out_ref, *, groups, t,
            t_pad, s, block_t, block_s, scale):
  j = pl.program_id(2)
  start = start_ref[()]
  last = last_ref[()]
  slot_N = j * block_s + jnp.arange(block_s)
  # Masked load: the ragged last block runs past S.
  k_NxDh = pl_triton.load(k_ref.at[pl.ds(j * block_s, block_s), :],
                          mask=(slot_N < s)[:, None], other=0.0)

  def query_block(i, carry):
    col, col_last = carry
    row_M = i * block_t + jnp.arange(block_t)
    vis_MxN = (slot_N[None, :] <= start + row_M[:, None]) & (row_M < t)[:, None]
    is_last_Mx1 = (row_M == last)[:, None]
    for g in range(groups):
      rows = pl.ds(g * t_pad + i * block_t, block_t)
      s_MxN = jnp.dot(q_ref[rows, :], k_NxDh.T, preferred_element_type=jnp.float32) * scale
      p_MxN = jnp.where(vis_MxN, jnp.exp(s_MxN - lse_ref[rows][:, None]), 0.0)
      col += jnp.sum(p_MxN, axis=0)
      col_last += jnp.sum(jnp.where(is_last_Mx1, p_MxN, 0.0), axis=0)
    return col, col_last

  # Causal: queries t < j * block_s - start see nothing of this block; slots past start + T
  # are seen by none (the loop is then empty).
  start = start.astype(jnp.int32)
  first = lax.div(jnp.maximum(j * block_s - start, 0), jnp.int32(block_t))
  n_t = jnp.where(j * block_s < start + t, jnp.int32(t_pad // block_t), jnp.int32(0))
  zero = jnp.zeros((block_s,), jnp.float32)
  col, col_last = lax.fori_loop(jnp.minimum(first, n_t).astype(jnp.int32), n_t, query_block,
                                (zero, zero))
  sum_ref[...] = col
  last_out_ref[...] = col_last


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def attn_stats_gpu(q_BxTxHxDh, k_BxKxSxDh, start_BxK, lse_BxTxH, query_valid_BxT,
                   block_mask_BxTxT=None, *, config: GpuConfig = GpuConfig(),
                   interpret: bool = False):
  """Triton entry point, causal block only; same contract as attn_stats_reference."""
  layout.require_causal(block_mask_BxTxT)
  b, t, h, dh = q_BxTxHxDh.shape
  kv, s = k_BxKxSxDh.shape[1:3]
  g = h // kv
  tiling.require_triton_head_dim("attn_stats_gpu", dh)
  block_t, block_s = config.block_t, config.block_s
  t_pad = tiling.round_up(t, block_t)
  s_pad = tiling.round_up(s, block_s)
  q_BxKxGxTpxDh, lse_BxKxGxTp, clipped_start_BxK, last_B = layout.kernel_operands(
      q_BxTxHxDh, k_BxKxSxDh, start_BxK, lse_BxTxH, query_valid_BxT, t_pad)
  # Rows g * Tp + t: one [G * Tp, Dh] matrix per (row, kv head).
  q_BxKxRxDh = q_BxKxGxTpxDh.reshape(b, kv, g * t_pad, dh)
  lse_BxKxR = lse_BxKxGxTp.reshape(b, kv, g * t_pad)
  last_BxK = jnp.broadcast_to(last_B[:, None], (b, kv))
  scalar = pl.BlockSpec((None, None), lambda bi, ki, j: (bi, ki))
  out = pl.BlockSpec((None, None, block_s), lambda bi, ki, j: (bi, ki, j))
  sums, lasts = pl.pallas_call(
      functools.partial(_kernel, groups=g, t=t, t_pad=t_pad, s=s, block_t=block_t,
                        block_s=block_s, scale=1.0 / math.sqrt(dh)),
      grid=(b, kv, s_pad // block_s),
      in_specs=[scalar, scalar,
                pl.BlockSpec((None, None, g * t_pad, dh), lambda bi, ki, j: (bi, ki, 0, 0)),
                pl.BlockSpec((None, None, g * t_pad), lambda bi, ki, j: (bi, ki, 0)),
                pl.BlockSpec((None, None, s, dh), lambda bi, ki, j: (bi, ki, 0, 0))],
      out_specs=[out, out],
      out_shape=[jax.ShapeDtypeStruct((b, kv, s_pad), jnp.float32)] * 2,
      compiler_params=pl_triton.CompilerParams(num_warps=config.num_warps,
                                               num_stages=config.num_stages),
      interpret=interpret, name="attn_stats_gpu",
  )(clipped_start_BxK, last_BxK, q_BxKxRxDh, lse_BxKxR, k_BxKxSxDh)
  return sums[..., :s], lasts[..., :s]
