"""Selected attention over a KV cache - Pallas GPU (Triton) kernel.

The TPU kernel's algorithm laid out for a GPU: one program per (row, kv head, block of folded
query rows) walks its block table with a ``fori_loop`` of ``count[b, k]`` steps (a dynamic trip
count: unselected blocks are never loaded), loading cache block ``table[i]`` with masked loads
and folding it into the online softmax (FlashAttention-2, arXiv 2307.08691) under the selection
mask, then the new block under its mask. Triton needs power-of-two sizes >= 16: T is padded to
one, block_s must be one and so must Dh (others raise NotImplementedError; the dispatcher then
uses the reference unless ``implementation="pallas"`` was asked for).
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

from jaxtok_kernels import online_softmax, tiling
from jaxtok_kernels.selected_attention import layout
from jaxtok_kernels.tree_attention import layout as tree_layout


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuConfig:
  block_s: int = 64
  block_r: int | None = None  # folded query rows per program (None: tree_layout.triton_rows)
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    tiling.validate_pow2("GpuConfig.block_s", self.block_s, tiling.TRITON_MIN_DOT)
    if self.block_r is not None:
      tiling.validate_pow2("GpuConfig.block_r", self.block_r, tiling.TRITON_MIN_DOT)


def _kernel(table_ref, count_ref, q_ref, kc_ref, vc_ref, sel_ref, kn_ref, vn_ref, mask_ref,
            o_ref, *residual_refs, s, block_s, scale):
  q_RxDh = q_ref[...]
  block_r, dh = q_RxDh.shape

  def cache_block(i, carry):
    first = table_ref[i] * block_s
    slot_N = first + jnp.arange(block_s)
    chosen_N = pl_triton.load(sel_ref.at[pl.ds(first, block_s)], mask=slot_N < s, other=0) != 0
    # Unselected slots (and the ragged end past S) read as 0: they may hold NaN.
    k = pl_triton.load(kc_ref.at[pl.ds(first, block_s), :], mask=chosen_N[:, None], other=0.0)
    v = pl_triton.load(vc_ref.at[pl.ds(first, block_s), :], mask=chosen_N[:, None], other=0.0)
    s_RxN = online_softmax.triton_scores(q_RxDh, k, scale)
    return online_softmax.triton_update(carry, s_RxN, chosen_N[None, :], v)

  carry = lax.fori_loop(0, count_ref[()], cache_block, online_softmax.triton_init(block_r, dh))
  s_new = online_softmax.triton_scores(q_RxDh, kn_ref[...], scale)
  carry = online_softmax.triton_update(carry, s_new, mask_ref[...] != 0, vn_ref[...])
  online_softmax.triton_finish(carry, o_ref, *residual_refs)  # the residual on request


@functools.partial(jax.jit, static_argnames=("config", "interpret", "return_residuals"))
def selected_attention_gpu(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, selected_BxKxS,
                           k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, *,
                           config: GpuConfig = GpuConfig(), interpret: bool = False,
                           return_residuals: bool = False):
  """Triton entry point; same contract as selected_attention_reference."""
  b, t, h, dh = q_BxTxHxDh.shape
  kv, s = k_cache_BxKxSxDh.shape[1:3]
  tiling.require_triton_head_dim("selected_attention_gpu", dh)
  t_pad, block_r = tree_layout.triton_rows(t, h // kv, config.block_r)
  rows = (h // kv) * t_pad
  block_s = config.block_s
  q_BxKxRxDh, kn_BxKxTpxDh, vn_BxKxTpxDh, mask_BxRxTp = tree_layout.kernel_operands(
      q_BxTxHxDh, k_cache_BxKxSxDh, k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, t_pad)
  table, count = layout.block_table(selected_BxKxS, block_s)
  nb = table.shape[-1]
  rows_block = pl.BlockSpec((None, None, block_r, dh), lambda bi, ki, ri: (bi, ki, ri, 0))

  def per_head(shape):  # the whole (row, kv head) slice, for every row block
    return pl.BlockSpec(shape, lambda bi, ki, ri: (bi, ki) + (0,) * (len(shape) - 2))
  out_shape = jax.ShapeDtypeStruct(q_BxKxRxDh.shape, q_BxTxHxDh.dtype)
  out_specs = rows_block
  if return_residuals:
    out_shape = (out_shape, jax.ShapeDtypeStruct((b, kv, rows), jnp.float32))
    out_specs = [rows_block, pl.BlockSpec((None, None, block_r), lambda bi, ki, ri: (bi, ki, ri))]
  out = pl.pallas_call(
      functools.partial(_kernel, s=s, block_s=block_s, scale=1.0 / math.sqrt(dh)),
      grid=(b, kv, rows // block_r),
      in_specs=[per_head((None, None, nb)), per_head((None, None)), rows_block,
                per_head((None, None, s, dh)), per_head((None, None, s, dh)),
                per_head((None, None, s)), per_head((None, None, t_pad, dh)),
                per_head((None, None, t_pad, dh)),
                pl.BlockSpec((None, block_r, t_pad), lambda bi, ki, ri: (bi, ri, 0))],
      out_specs=out_specs, out_shape=out_shape,
      compiler_params=pl_triton.CompilerParams(num_warps=config.num_warps,
                                               num_stages=config.num_stages),
      interpret=interpret, name="selected_attention_gpu",
  )(table, count, q_BxKxRxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh,
    selected_BxKxS.astype(jnp.int32), kn_BxKxTpxDh, vn_BxKxTpxDh, mask_BxRxTp)
  return tree_layout.unfold_outputs(out, t, t_pad, return_residuals)
