"""Tree attention over a KV cache - Pallas GPU (Triton) kernel.

Same algorithm as the TPU kernel (FlashAttention-2 online softmax, Dao arXiv 2307.08691, over
the cache, then the draft-tree block under its mask, SpecInfer arXiv 2305.09781), laid out the
way a GPU wants it: one program per (batch, kv head, block of folded query rows), and a
`fori_loop` over cache blocks whose trip count is cdiv(cache_len[b], block_s) - a dynamic bound,
so blocks past the cache length are never loaded.

Each (row, kv head) has its own cache length. Triton needs power-of-two array sizes and matmul
dims >= 16, so T is padded to a power of two >= 16 and Dh must already be a power of two >= 16;
other head dims raise NotImplementedError (the automatic dispatcher then uses the reference; an
explicit implementation="pallas" raises). Any GQA group size G = H / K works. The cache itself is not
padded: loads of the ragged last block are masked. It is kv-head-major, [B, K, S, Dh], so one
kv head's cache is a contiguous [S, Dh] matrix that each program reads in place.

Triton is the GPU lowering jax 0.12 compiles for H100 without a device (Mosaic GPU's
`pallas_call` path is deprecated in favour of `plgpu.kernel`; see kv_and_tree.md §C).
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
from jaxtok_kernels.tree_attention import layout

DEFAULT_BLOCK_S = 64


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuConfig:
  """Tiling of the Triton kernel: block_s cache slots per loop step, block_r folded query rows
  per program (None: heuristics in ``plan``), and Triton's launch parameters."""
  block_s: int | None = None
  block_r: int | None = None
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    for name in ("block_s", "block_r"):
      value = getattr(self, name)
      if value is not None:
        tiling.validate_pow2(f"GpuConfig.{name}", value, tiling.TRITON_MIN_DOT)
    if self.num_warps < 1 or self.num_stages < 1:
      raise tiling.BlockSizeError(f"GpuConfig.num_warps and num_stages must be >= 1, got "
                                  f"{self.num_warps}, {self.num_stages}")


def plan(t: int, h: int, kv_heads: int, head_dim: int, config: GpuConfig):
  """Static tiling (Tp, block_r, block_s); NotImplementedError for shapes Triton cannot tile."""
  tiling.require_triton_head_dim("tree_attention_gpu", head_dim)
  t_pad, block_r = layout.triton_rows(t, h // kv_heads, config.block_r)
  block_s = DEFAULT_BLOCK_S if config.block_s is None else config.block_s
  return t_pad, block_r, block_s


def _kernel(len_ref, q_ref, kc_ref, vc_ref, kn_ref, vn_ref, mask_ref, o_ref, *residual_refs,
            block_s, scale):
  length = len_ref[()]
  q_RxDh = q_ref[...]
  block_r, dh = q_RxDh.shape

  def cache_block(i, carry):
    slot_N = i * block_s + jnp.arange(block_s)
    live_N = slot_N < length
    # Masked loads: the ragged last block may run past S, and slots past cache_len may hold
    # NaN (0 * NaN = NaN even with p = 0), so both read as 0.
    k = pl_triton.load(kc_ref.at[pl.ds(i * block_s, block_s), :], mask=live_N[:, None],
                       other=0.0)
    v = pl_triton.load(vc_ref.at[pl.ds(i * block_s, block_s), :], mask=live_N[:, None],
                       other=0.0)
    s = online_softmax.triton_scores(q_RxDh, k, scale)
    return online_softmax.triton_update(carry, s, live_N[None, :], v)

  carry = lax.fori_loop(0, pl.cdiv(length, block_s), cache_block,
                        online_softmax.triton_init(block_r, dh))
  s_tree = online_softmax.triton_scores(q_RxDh, kn_ref[...], scale)
  carry = online_softmax.triton_update(carry, s_tree, mask_ref[...] != 0, vn_ref[...])
  online_softmax.triton_finish(carry, o_ref, *residual_refs)  # the residual on request


@functools.partial(jax.jit, static_argnames=("config", "interpret", "return_residuals"))
def tree_attention_gpu(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_len_BxK,
                       k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, *,
                       config: GpuConfig = GpuConfig(), interpret: bool = False,
                       return_residuals: bool = False):
  """Triton kernel entry point; same contract as tree_attention_reference."""
  b, t, h, dh = q_BxTxHxDh.shape
  kv, s = k_cache_BxKxSxDh.shape[1:3]
  t_pad, block_r, block_s = plan(t, h, kv, dh, config)
  rows = (h // kv) * t_pad
  q_BxKxRxDh, kn_BxKxTpxDh, vn_BxKxTpxDh, mask_BxRxTp = layout.kernel_operands(
      q_BxTxHxDh, k_cache_BxKxSxDh, k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, t_pad)

  rows_block = pl.BlockSpec((None, None, block_r, dh), lambda bi, ki, ri: (bi, ki, ri, 0))
  tree_block = pl.BlockSpec((None, None, t_pad, dh), lambda bi, ki, ri: (bi, ki, 0, 0))
  # Whole cache of one kv head per program; the kernel slices it block by block.
  cache_spec = pl.BlockSpec((None, None, s, dh), lambda bi, ki, ri: (bi, ki, 0, 0))
  out_shape = jax.ShapeDtypeStruct(q_BxKxRxDh.shape, q_BxTxHxDh.dtype)
  out_specs = rows_block
  if return_residuals:
    out_shape = (out_shape, jax.ShapeDtypeStruct((b, kv, rows), jnp.float32))
    out_specs = [rows_block, pl.BlockSpec((None, None, block_r),
                                          lambda bi, ki, ri: (bi, ki, ri))]
  out = pl.pallas_call(
      functools.partial(_kernel, block_s=block_s, scale=1.0 / math.sqrt(dh)),
      grid=(b, kv, rows // block_r),
      in_specs=[pl.BlockSpec((None, None), lambda bi, ki, ri: (bi, ki)), rows_block, cache_spec,
                cache_spec, tree_block, tree_block,
                pl.BlockSpec((None, block_r, t_pad), lambda bi, ki, ri: (bi, ri, 0))],
      out_specs=out_specs,
      out_shape=out_shape,
      compiler_params=pl_triton.CompilerParams(num_warps=config.num_warps,
                                               num_stages=config.num_stages),
      interpret=interpret,
      name="tree_attention_gpu",
  )(layout.clamp_len(cache_len_BxK, s), q_BxKxRxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh,
    kn_BxKxTpxDh, vn_BxKxTpxDh, mask_BxRxTp)
  return layout.unfold_outputs(out, t, t_pad, return_residuals)
