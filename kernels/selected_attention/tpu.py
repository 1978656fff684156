"""Selected attention over a KV cache - Pallas TPU (Mosaic) kernel.

FlashAttention-2's online softmax (arXiv 2307.08691, Algorithm 1) over only the cache blocks
that hold a selected slot, then the new block under its mask (kernels/tree_attention's final
step). The block table of each (row, kv head) arrives by scalar prefetch
(pltpu.PrefetchScalarGridSpec), so the cache index_map DMAs block ``table[j]`` at grid step j -
a gather of whole [block_s, Dh] tiles straight from the cache as stored, the per-head page
table of paged attention (kv_and_tree.md "Which loops become Pallas kernels", K4):

  grid = (B, K, n_blocks + 1)
  steps j < count[b, k] : cache block table[b, k, j], slots masked by the selection
  steps count <= j < n  : skipped; the index_map repeats the last block (no DMA)
  step  j = n_blocks    : the T new tokens under the block mask, then normalise and write out

The G query heads of a kv head are folded into rows (kernels/tree_attention/layout.py), so a
selected block is read once for all of them. Unselected slots may hold anything (NaN
included): their scores are masked and their values zeroed.
"""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxtok_kernels import common
from jaxtok_kernels.selected_attention import layout
from jaxtok_kernels.tree_attention import layout as tree_layout

_MASKED = common.MASKED
_LANES = common.TPU_LANES  # m, l and lse lane-replicated (a (rows, 1) buffer pads to 128 anyway)
DEFAULT_BLOCK_S = 512


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpuConfig:
  """block_s: cache slots per visited block (None: min(S, 512)); a multiple of 128 unless it
  spans all of S (the selection row is a lane-dense (1, block_s) tile)."""
  block_s: int | None = None

  def __post_init__(self):
    if self.block_s is not None and self.block_s < 1:
      raise common.BlockSizeError(f"TpuConfig.block_s must be >= 1, got {self.block_s}")


def plan(t: int, s: int, head_dim: int, config: TpuConfig):
  block_s = config.block_s or (s if s <= DEFAULT_BLOCK_S else DEFAULT_BLOCK_S)
  common.validate_tpu_block("k_cache_BxKxSxDh block (block_s, Dh)", (block_s, head_dim),
                            (s, head_dim))
  common.validate_tpu_block("selected_BxKx1xS block (1, block_s)", (1, block_s), (1, s))
  return common.round_up(t, common.TPU_SUBLANES), block_s, common.cdiv(s, block_s)


def _update(m_scr, l_scr, acc_scr, s_RxN, vis, v_NxDh):
  """One online-softmax step: fold scores s (fp32, masked by vis) and values v in."""
  m_prev, l_prev = m_scr[...][:, :1], l_scr[...][:, :1]
  s_RxN = jnp.where(vis, s_RxN, _MASKED)
  m_new = jnp.maximum(m_prev, jnp.max(s_RxN, axis=1, keepdims=True))
  p_RxN = jnp.where(vis, jnp.exp(s_RxN - m_new), 0.0)
  alpha = jnp.exp(m_prev - m_new)
  l_scr[...] = jnp.broadcast_to(alpha * l_prev + jnp.sum(p_RxN, axis=1, keepdims=True),
                                l_scr.shape)
  m_scr[...] = jnp.broadcast_to(m_new, m_scr.shape)
  pv = lax.dot_general(p_RxN.astype(v_NxDh.dtype), v_NxDh, (((1,), (0,)), ((), ())),
                       preferred_element_type=jnp.float32)
  acc_scr[...] = alpha * acc_scr[...] + pv


def _scores(q_RxDh, k_NxDh, scale):
  return lax.dot_general(q_RxDh, k_NxDh, (((1,), (1,)), ((), ())),
                         preferred_element_type=jnp.float32) * scale


def _kernel(table_ref, count_ref, q_ref, kc_ref, vc_ref, sel_ref, selc_ref, kn_ref, vn_ref,
            mask_ref, *refs, kv, n_blocks, scale, return_residuals):
  if return_residuals:
    o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
  else:
    (o_ref, m_scr, l_scr, acc_scr), lse_ref = refs, None
  b, k, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    m_scr[...] = jnp.full(m_scr.shape, _MASKED, jnp.float32)
    l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
    acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)

  @pl.when(j < count_ref[b * kv + k])
  def _cache_block():
    v = jnp.where(selc_ref[...] != 0, vc_ref[...], 0)  # unselected values may be NaN
    _update(m_scr, l_scr, acc_scr, _scores(q_ref[...], kc_ref[...], scale), sel_ref[...] != 0, v)

  @pl.when(j == n_blocks)
  def _block_and_finish():
    _update(m_scr, l_scr, acc_scr, _scores(q_ref[...], kn_ref[...], scale), mask_ref[...] != 0,
            vn_ref[...])
    l = l_scr[...][:, :1]
    o_ref[...] = (acc_scr[...] * jnp.where(l > 0, 1.0 / l, 0.0)).astype(o_ref.dtype)
    if return_residuals:
      l_lanes = l_scr[...]
      lse_ref[...] = jnp.where(l_lanes > 0, m_scr[...] + jnp.log(jnp.maximum(l_lanes, 1e-30)),
                               _MASKED)


@functools.partial(jax.jit, static_argnames=("config", "interpret", "return_residuals"))
def selected_attention_tpu(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, selected_BxKxS,
                           k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, *,
                           config: TpuConfig = TpuConfig(), interpret: bool = False,
                           return_residuals: bool = False):
  """Mosaic entry point; same contract as selected_attention_reference."""
  b, t, h, dh = q_BxTxHxDh.shape
  kv, s = k_cache_BxKxSxDh.shape[1:3]
  t_pad, block_s, n_blocks = plan(t, s, dh, config)
  rows = (h // kv) * t_pad
  q_f, kn, vn, mask_rows, _ = tree_layout.kernel_operands(
      q_BxTxHxDh, jnp.zeros((b, kv), jnp.int32), k_new_BxTxKxDh, v_new_BxTxKxDh,
      jnp.broadcast_to(block_mask_BxTxT, (b, t, t)), kv, s, t_pad, k_cache_BxKxSxDh.dtype)
  table, count = layout.block_table(selected_BxKxS, block_s)
  # Padded to whole blocks with "not selected": a ragged last block must not read garbage.
  sel = common.pad_axis(selected_BxKxS.astype(jnp.int32), 2, n_blocks * block_s)

  def cache_index(bi, ki, j, table_ref, _):
    return bi, ki, table_ref[(bi * kv + ki) * n_blocks + jnp.minimum(j, n_blocks - 1)], 0

  def sel_index(bi, ki, j, table_ref, _):
    return bi, ki, 0, table_ref[(bi * kv + ki) * n_blocks + jnp.minimum(j, n_blocks - 1)]

  fixed = lambda shape: pl.BlockSpec(shape, lambda bi, ki, j, *_: (bi, ki, 0, 0))  # noqa: E731
  cache_block = pl.BlockSpec((None, None, block_s, dh), cache_index)
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(b, kv, n_blocks + 1),
      in_specs=[fixed((None, None, rows, dh)), cache_block, cache_block,
                pl.BlockSpec((None, None, 1, block_s), sel_index),
                pl.BlockSpec((None, None, block_s, 1), cache_index),
                fixed((None, None, t_pad, dh)), fixed((None, None, t_pad, dh)),
                pl.BlockSpec((None, rows, t_pad), lambda bi, ki, j, *_: (bi, 0, 0))],
      out_specs=([fixed((None, None, rows, dh)), fixed((None, None, rows, _LANES))]
                 if return_residuals else fixed((None, None, rows, dh))),
      scratch_shapes=[pltpu.VMEM((rows, _LANES), jnp.float32),
                      pltpu.VMEM((rows, _LANES), jnp.float32),
                      pltpu.VMEM((rows, dh), jnp.float32)])
  out_shape = jax.ShapeDtypeStruct(q_f.shape, q_BxTxHxDh.dtype)
  if return_residuals:
    out_shape = (out_shape, jax.ShapeDtypeStruct((b, kv, rows, _LANES), jnp.float32))
  out = pl.pallas_call(
      functools.partial(_kernel, kv=kv, n_blocks=n_blocks, scale=1.0 / math.sqrt(dh),
                        return_residuals=return_residuals),
      grid_spec=grid_spec, out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret, name="selected_attention_tpu",
  )(table.reshape(-1), count.reshape(-1), q_f, k_cache_BxKxSxDh, v_cache_BxKxSxDh,
    sel[:, :, None, :], sel[..., None], kn, vn, mask_rows)
  if not return_residuals:
    return tree_layout.unfold(out, t, t_pad)
  o, lse = out
  return tree_layout.unfold(o, t, t_pad), tree_layout.unfold_lse(lse[..., 0], t, t_pad)
