"""Tree attention over a KV cache - Pallas TPU (Mosaic) kernel.

FlashAttention-2's online softmax (Dao, arXiv 2307.08691, Algorithm 1; kernels/online_softmax.py)
over the cache blocks, with the draft tree block of SpecInfer-style verification (arXiv
2305.09781) as one extra step:

  grid = (B, K / kh, n_blocks + 1)       kh kv heads per program (1 when Dh fills the lanes)
  steps j < n_blocks : cache block j (all visible below cache_len), skipped past cache_len
  step  j = n_blocks : the T new nodes under the tree mask, then normalise and write out

`cache_len` (one per row and kv head) is scalar-prefetched into SMEM (pltpu.PrefetchScalarGridSpec)
so the cache index_map can clamp to the last block that holds a live slot of the program's kv
heads: Pallas skips the DMA when a block index repeats, so a short cache costs only its live
blocks, not S. On request the kernel also writes the softmax residual lse = m + log(l) of every
row (``return_residuals``), from which attention statistics are rebuilt exactly. The G query heads of one kv head
are folded into rows (layout.py), so each cache block is read from HBM once per kv head.

The cache is kv-head-major, [B, K, S, Dh], and is blocked as (1, kh, block_s, Dh): its last two
dims are whole-Dh rows of one kv head, so the block obeys the (8, 128) rule for any Dh (a full
dimension) and is DMA'd straight from the array as stored - no relayout copy of the cache.
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
from jaxtok_kernels.tree_attention import layout

DEFAULT_BLOCK_S = 512


def _heads_per_program(kv_heads: int, head_dim: int) -> int:
  """Fewest kv heads (a divisor of K) whose head dims fill a 128-lane row, or all K.

  Any kh is legal (each head is its own (block_s, Dh) tile). With Dh < 128 a single head per
  program would halve (or worse) the bytes each grid step moves while paying the same per-step
  overhead, so small heads are grouped; Dh >= 128 gives kh = 1 and the most parallel programs.
  """
  for kh in range(1, kv_heads + 1):
    if kv_heads % kh == 0 and kh * head_dim >= tiling.TPU_LANES:
      return kh
  return kv_heads


def _group_lengths(len_ref, bi, ki, kh: int, kv: int):
  """The cache lengths of the kh kv heads of program (bi, ki) from the flat [B * K] SMEM array."""
  return [len_ref[bi * kv + ki * kh + i] for i in range(kh)]


def _max(xs):
  out = xs[0]
  for x in xs[1:]:
    out = jnp.maximum(out, x)
  return out


def _kernel(len_ref, q_ref, kc_ref, vc_ref, kn_ref, vn_ref, mask_ref, *refs, kh, kv, block_s,
            n_blocks, scale, return_residuals):
  if return_residuals:
    o_ref, lse_ref, m_scr, l_scr, acc_scr = refs
  else:
    (o_ref, m_scr, l_scr, acc_scr), lse_ref = refs, None
  b, kb, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)
  lengths = _group_lengths(len_ref, b, kb, kh, kv)

  @pl.when(j == 0)
  def _init():
    online_softmax.tpu_init(m_scr, l_scr, acc_scr)

  @pl.when((j < n_blocks) & (j * block_s < _max(lengths)))
  def _cache_block():
    col_1xN = j * block_s + lax.broadcasted_iota(jnp.int32, (1, block_s), 1)
    row_Nx1 = j * block_s + lax.broadcasted_iota(jnp.int32, (block_s, 1), 0)
    for i in range(kh):
      # Slots past cache_len (and a ragged last block's out-of-bounds rows) may hold anything,
      # even NaN; p = 0 there, but 0 * NaN = NaN, so the values are zeroed too.
      v = jnp.where(row_Nx1 < lengths[i], vc_ref[i], 0)
      s = online_softmax.tpu_scores(q_ref[i], kc_ref[i], scale)
      online_softmax.tpu_update(m_scr, l_scr, acc_scr, s, col_1xN < lengths[i], v, at=i)

  @pl.when(j == n_blocks)
  def _tree_block_and_finish():
    vis = mask_ref[...] != 0
    for i in range(kh):
      s = online_softmax.tpu_scores(q_ref[i], kn_ref[i], scale)
      online_softmax.tpu_update(m_scr, l_scr, acc_scr, s, vis, vn_ref[i], at=i)
      online_softmax.tpu_finish(m_scr, l_scr, acc_scr, o_ref, lse_ref, at=i)


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpuConfig:
  """Tiling of the Mosaic kernel. block_s: cache slots per grid step (None: min(S, 512)); the
  (8, 128) rule applies unless it spans all of S."""
  block_s: int | None = None

  def __post_init__(self):
    if self.block_s is not None and self.block_s < 1:
      raise tiling.BlockSizeError(f"TpuConfig.block_s must be >= 1, got {self.block_s}")


def plan(t: int, s: int, kv_heads: int, head_dim: int, config: TpuConfig):
  """Static tiling: (Tp, kh, block_s, n_blocks). Raises BlockSizeError on an illegal block."""
  t_pad = tiling.round_up(t, tiling.TPU_SUBLANES)
  kh = _heads_per_program(kv_heads, head_dim)
  block_s = config.block_s
  if block_s is None:
    block_s = s if s <= DEFAULT_BLOCK_S else DEFAULT_BLOCK_S
  tiling.validate_tpu_block("k_cache_BxKxSxDh block (kh, block_s, Dh)",
                            (kh, block_s, head_dim), (kv_heads, s, head_dim))
  return t_pad, kh, block_s, tiling.cdiv(s, block_s)


@functools.partial(jax.jit, static_argnames=("config", "interpret", "return_residuals"))
def tree_attention_tpu(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_len_BxK,
                       k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, *,
                       config: TpuConfig = TpuConfig(), interpret: bool = False,
                       return_residuals: bool = False):
  """Mosaic kernel entry point; same contract as tree_attention_reference."""
  b, t, h, dh = q_BxTxHxDh.shape
  kv, s = k_cache_BxKxSxDh.shape[1:3]
  t_pad, kh, block_s, n_blocks = plan(t, s, kv, dh, config)
  rows = (h // kv) * t_pad
  q_BxKxRxDh, kn_BxKxTpxDh, vn_BxKxTpxDh, mask_BxRxTp = layout.kernel_operands(
      q_BxTxHxDh, k_cache_BxKxSxDh, k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, t_pad)
  # 1-D in SMEM: a 2-D SMEM array pads to 128 lanes.
  lens_flat = layout.clamp_len(cache_len_BxK, s).reshape(b * kv)

  def cache_index(bi, ki, j, len_ref):
    # Past the last live block of the program's kv heads, repeat it: same block index =>
    # Pallas issues no new DMA.
    last = jnp.maximum(pl.cdiv(_max(_group_lengths(len_ref, bi, ki, kh, kv)), block_s) - 1, 0)
    return bi, ki, jnp.minimum(j, last), 0

  head_block = pl.BlockSpec((None, kh, rows, dh), lambda bi, ki, j, _: (bi, ki, 0, 0))
  tree_block = pl.BlockSpec((None, kh, t_pad, dh), lambda bi, ki, j, _: (bi, ki, 0, 0))
  cache_block = pl.BlockSpec((None, kh, block_s, dh), cache_index)
  # Residuals lane-replicated like m and l: a (rows, 1) block would break the (8, 128) rule.
  lse_block = pl.BlockSpec((None, kh, rows, online_softmax.STAT_LANES),
                           lambda bi, ki, j, _: (bi, ki, 0, 0))
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=1,
      grid=(b, kv // kh, n_blocks + 1),
      in_specs=[head_block, cache_block, cache_block, tree_block, tree_block,
                pl.BlockSpec((None, rows, t_pad), lambda bi, ki, j, _: (bi, 0, 0))],
      out_specs=[head_block, lse_block] if return_residuals else head_block,
      scratch_shapes=online_softmax.tpu_scratch(rows, dh, kh))
  kernel = functools.partial(_kernel, kh=kh, kv=kv, block_s=block_s, n_blocks=n_blocks,
                             scale=1.0 / math.sqrt(dh), return_residuals=return_residuals)
  out_shape = jax.ShapeDtypeStruct(q_BxKxRxDh.shape, q_BxTxHxDh.dtype)
  if return_residuals:
    out_shape = (out_shape, jax.ShapeDtypeStruct((b, kv, rows, online_softmax.STAT_LANES),
                                                 jnp.float32))
  itemsize = k_cache_BxKxSxDh.dtype.itemsize
  out = pl.pallas_call(
      kernel,
      grid_spec=grid_spec,
      out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      cost_estimate=pl.CostEstimate(
          flops=4 * b * h * t_pad * (s + t_pad) * dh,
          transcendentals=b * h * t_pad * (s + t_pad),
          bytes_accessed=2 * b * (s + t_pad) * kv * dh * itemsize
          + 2 * q_BxKxRxDh.size * q_BxKxRxDh.dtype.itemsize),
      interpret=interpret,
      name="tree_attention_tpu",
  )(lens_flat, q_BxKxRxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, kn_BxKxTpxDh, vn_BxKxTpxDh,
    mask_BxRxTp)
  return layout.unfold_outputs(out, t, t_pad, return_residuals)
