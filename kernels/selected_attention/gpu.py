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

from jaxtok_kernels import common
from jaxtok_kernels.selected_attention import layout
from jaxtok_kernels.tree_attention import layout as tree_layout

_MASKED = common.MASKED


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuConfig:
  block_s: int = 64
  block_r: int | None = None  # folded query rows per program (None: min(G * Tp's 2-part, 64))
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    common.validate_pow2("GpuConfig.block_s", self.block_s, common.TRITON_MIN_DOT)
    if self.block_r is not None:
      common.validate_pow2("GpuConfig.block_r", self.block_r, common.TRITON_MIN_DOT)


def _kernel(table_ref, count_ref, q_ref, kc_ref, vc_ref, sel_ref, kn_ref, vn_ref, mask_ref,
            o_ref, *residual_refs, s, block_s, scale):
  q_RxDh = q_ref[...]
  block_r, dh = q_RxDh.shape

  def update(carry, s_RxN, vis, v_NxDh):
    m_prev, l_prev, acc = carry
    s_RxN = jnp.where(vis, s_RxN * scale, _MASKED)
    m_new = jnp.maximum(m_prev, jnp.max(s_RxN, axis=1))
    p_RxN = jnp.where(vis, jnp.exp(s_RxN - m_new[:, None]), 0.0)
    alpha = jnp.exp(m_prev - m_new)
    pv = jnp.dot(p_RxN.astype(v_NxDh.dtype), v_NxDh, preferred_element_type=jnp.float32)
    return m_new, alpha * l_prev + jnp.sum(p_RxN, axis=1), alpha[:, None] * acc + pv

  def cache_block(i, carry):
    first = table_ref[i] * block_s
    slot_N = first + jnp.arange(block_s)
    chosen_N = pl_triton.load(sel_ref.at[pl.ds(first, block_s)], mask=slot_N < s, other=0) != 0
    # Unselected slots (and the ragged end past S) read as 0: they may hold NaN.
    k = pl_triton.load(kc_ref.at[pl.ds(first, block_s), :], mask=chosen_N[:, None], other=0.0)
    v = pl_triton.load(vc_ref.at[pl.ds(first, block_s), :], mask=chosen_N[:, None], other=0.0)
    return update(carry, jnp.dot(q_RxDh, k.T, preferred_element_type=jnp.float32),
                  chosen_N[None, :], v)

  carry = (jnp.full((block_r,), _MASKED, jnp.float32), jnp.zeros((block_r,), jnp.float32),
           jnp.zeros((block_r, dh), jnp.float32))
  carry = lax.fori_loop(0, count_ref[()], cache_block, carry)
  s_new = jnp.dot(q_RxDh, kn_ref[...].T, preferred_element_type=jnp.float32)
  m, l, acc = update(carry, s_new, mask_ref[...] != 0, vn_ref[...])
  o_ref[...] = (acc * jnp.where(l > 0, 1.0 / l, 0.0)[:, None]).astype(o_ref.dtype)
  if residual_refs:
    residual_refs[0][...] = jnp.where(l > 0, m + jnp.log(jnp.maximum(l, 1e-30)), _MASKED)


@functools.partial(jax.jit, static_argnames=("config", "interpret", "return_residuals"))
def selected_attention_gpu(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, selected_BxKxS,
                           k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, *,
                           config: GpuConfig = GpuConfig(), interpret: bool = False,
                           return_residuals: bool = False):
  """Triton entry point; same contract as selected_attention_reference."""
  b, t, h, dh = q_BxTxHxDh.shape
  kv, s = k_cache_BxKxSxDh.shape[1:3]
  g = h // kv
  if not common.is_pow2(dh) or dh < common.TRITON_MIN_DOT:
    raise NotImplementedError(f"selected_attention_gpu: head dim {dh} must be a power of two "
                              f">= {common.TRITON_MIN_DOT} (Triton)")
  t_pad = common.next_pow2(max(t, common.TRITON_MIN_DOT))
  rows = g * t_pad
  block_r = config.block_r or min(t_pad * (g & -g), 64)
  if rows % block_r:
    raise common.BlockSizeError(f"block_r = {block_r} must divide the folded rows G*Tp = {rows}")
  block_s = config.block_s
  q_f, kn, vn, mask_rows, _ = tree_layout.kernel_operands(
      q_BxTxHxDh, jnp.zeros((b, kv), jnp.int32), k_new_BxTxKxDh, v_new_BxTxKxDh,
      jnp.broadcast_to(block_mask_BxTxT, (b, t, t)), kv, s, t_pad, k_cache_BxKxSxDh.dtype)
  table, count = layout.block_table(selected_BxKxS, block_s)
  nb = table.shape[-1]
  rows_block = pl.BlockSpec((None, None, block_r, dh), lambda bi, ki, ri: (bi, ki, ri, 0))

  def per_head(shape):  # the whole (row, kv head) slice, for every row block
    return pl.BlockSpec(shape, lambda bi, ki, ri: (bi, ki) + (0,) * (len(shape) - 2))
  out_shape = jax.ShapeDtypeStruct(q_f.shape, q_BxTxHxDh.dtype)
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
  )(table, count, q_f, k_cache_BxKxSxDh, v_cache_BxKxSxDh, selected_BxKxS.astype(jnp.int32), kn,
    vn, mask_rows)
  if not return_residuals:
    return tree_layout.unfold(out, t, t_pad)
  o, lse = out
  return tree_layout.unfold(o, t, t_pad), tree_layout.unfold_lse(lse, t, t_pad)
