"""Selected attention over a KV cache - Pallas TPU (Mosaic) kernel.

FlashAttention-2's online softmax (arXiv 2307.08691, Algorithm 1; kernels/online_softmax.py)
over only the cache blocks that hold a selected slot, then the new block under its mask
(kernels/tree_attention's final step). The block table of each (row, kv head) arrives by
scalar prefetch (pltpu.PrefetchScalarGridSpec), so the cache index_map DMAs block ``table[j]``
at grid step j -
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

from jaxtok_kernels import online_softmax, tiling
from jaxtok_kernels.selected_attention import layout
from jaxtok_kernels.tree_attention import layout as tree_layout

DEFAULT_BLOCK_S = 512


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpuConfig:
  """block_s: cache slots per visited block (None: min(S, 512)); a multiple of 128 unless it
  spans all of S (the selection row is a lane-dense (1, block_s) tile)."""
  block_s: int | None = None

  def __post_init__(self):
    if self.block_s is not None and self.block_s < 1:
      raise tiling.BlockSizeError(f"TpuConfig.block_s must be >= 1, got {self.block_s}")


def plan(t: int, s: int, head_dim: int, config: TpuConfig):
  block_s = config.block_s or (s if s <= DEFAULT_BLOCK_S else DEFAULT_BLOCK_S)
  tiling.validate_tpu_block("k_cache_BxKxSxDh block (block_s, Dh)", (block_s, head_dim),
                            (s, head_dim))
  tiling.validate_tpu_block("selected_BxKx1xS block (1, block_s)", (1, block_s), (1, s))
  return tiling.round_up(t, tiling.TPU_SUBLANES), block_s, tiling.cdiv(s, block_s)


def _kernel(table_ref, count_ref, q_ref, kc_ref, vc_ref, sel_ref, selc_ref, kn_ref, vn_ref,
            mask_ref, *refs, kv, n_blocks, scale, return_residuals):
  if return_residuals:
    o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
  else:
    (o_ref, m_scr, l_scr, acc_scr), lse_ref = refs, None
  b, k, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    online_softmax.tpu_init(m_scr, l_scr, acc_scr)

  @pl.when(j < count_ref[b * kv + k])
  def _cache_block():
    v = jnp.where(selc_ref[...] != 0, vc_ref[...], 0)  # unselected values may be NaN
    s = online_softmax.tpu_scores(q_ref[...], kc_ref[...], scale)
    online_softmax.tpu_update(m_scr, l_scr, acc_scr, s, sel_ref[...] != 0, v)

  @pl.when(j == n_blocks)
  def _block_and_finish():
    s = online_softmax.tpu_scores(q_ref[...], kn_ref[...], scale)
    online_softmax.tpu_update(m_scr, l_scr, acc_scr, s, mask_ref[...] != 0, vn_ref[...])
    online_softmax.tpu_finish(m_scr, l_scr, acc_scr, o_ref, lse_ref)


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
  q_BxKxRxDh, kn_BxKxTpxDh, vn_BxKxTpxDh, mask_BxRxTp = tree_layout.kernel_operands(
      q_BxTxHxDh, k_cache_BxKxSxDh, k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, t_pad)
  table, count = layout.block_table(selected_BxKxS, block_s)
  # Padded to whole blocks with "not selected": a ragged last block must not read garbage.
  sel = tiling.pad_axis(selected_BxKxS.astype(jnp.int32), 2, n_blocks * block_s)

  def cache_index(bi, ki, j, table_ref, _):
    return bi, ki, table_ref[(bi * kv + ki) * n_blocks + jnp.minimum(j, n_blocks - 1)], 0

  def sel_index(bi, ki, j, table_ref, _):
    return bi, ki, 0, table_ref[(bi * kv + ki) * n_blocks + jnp.minimum(j, n_blocks - 1)]

  lanes = online_softmax.STAT_LANES  # lse lane-replicated like m and l
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
      out_specs=([fixed((None, None, rows, dh)), fixed((None, None, rows, lanes))]
                 if return_residuals else fixed((None, None, rows, dh))),
      scratch_shapes=online_softmax.tpu_scratch(rows, dh))
  out_shape = jax.ShapeDtypeStruct(q_BxKxRxDh.shape, q_BxTxHxDh.dtype)
  if return_residuals:
    out_shape = (out_shape, jax.ShapeDtypeStruct((b, kv, rows, lanes), jnp.float32))
  out = pl.pallas_call(
      functools.partial(_kernel, kv=kv, n_blocks=n_blocks, scale=1.0 / math.sqrt(dh),
                        return_residuals=return_residuals),
      grid_spec=grid_spec, out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret, name="selected_attention_tpu",
  )(table.reshape(-1), count.reshape(-1), q_BxKxRxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh,
    sel[:, :, None, :], sel[..., None], kn_BxKxTpxDh, vn_BxKxTpxDh, mask_BxRxTp)
  return tree_layout.unfold_outputs(out, t, t_pad, return_residuals)
