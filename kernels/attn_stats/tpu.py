"""Attention statistics per cache slot - Pallas TPU (Mosaic) kernel.

The second pass of FlashAttention-style statistics (kv_and_tree.md "Which loops become Pallas
kernels", K2): the forward kernel returned lse, so p = exp(q.k / sqrt(Dh) - lse) is exact
without a running max, and the column sums over queries are a plain accumulation:

  grid = (B, K, n_slot_blocks, n_query_blocks)      the query axis innermost ("arbitrary")
  program (b, k, j, i): scores of query block i (all G query heads) against key block j,
  p masked causally, summed over the rows into the resident (1, block_s) output block j

The key block stays in VMEM while the query blocks stream past it, so every key is read from
HBM once. Query blocks that see nothing of key block j (causal: they lie before it) are
skipped with ``pl.when`` and their DMA is elided by clamping the query index_map to the first
block that sees j (a repeated block index issues no copy); key blocks past start + T (slots the
block never reaches) are skipped the same way. start (per row and kv head) and the last valid
query (per row) arrive by scalar prefetch. The last query's row is accumulated by the one query
block that holds it.
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

from jaxtok_kernels import tiling
from jaxtok_kernels.attn_stats import layout

DEFAULT_BLOCK_T = 256
DEFAULT_BLOCK_S = 512


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpuConfig:
  """Tiling: block_t queries (of every query head of a kv head) and block_s key slots per grid
  step (None: min(T rounded to 8, 256) and min(S, 512)); the (8, 128) rule applies."""
  block_t: int | None = None
  block_s: int | None = None

  def __post_init__(self):
    for name in ("block_t", "block_s"):
      value = getattr(self, name)
      if value is not None and value < 1:
        raise tiling.BlockSizeError(f"TpuConfig.{name} must be >= 1, got {value}")


def plan(t: int, s: int, head_dim: int, config: TpuConfig):
  """Static tiling (Tp, block_t, block_s); BlockSizeError on an illegal block."""
  block_t = config.block_t or min(tiling.round_up(t, tiling.TPU_SUBLANES), DEFAULT_BLOCK_T)
  if block_t % tiling.TPU_SUBLANES:
    raise tiling.BlockSizeError(f"TpuConfig.block_t = {block_t} must be a multiple of "
                                f"{tiling.TPU_SUBLANES} (TPU sublanes)")
  block_s = config.block_s or (s if s <= DEFAULT_BLOCK_S else DEFAULT_BLOCK_S)
  tiling.validate_tpu_block("k_BxKxSxDh block (block_s, Dh)", (block_s, head_dim), (s, head_dim))
  tiling.validate_tpu_block("sum_BxKx1xS block (1, block_s)", (1, block_s), (1, s))
  return tiling.round_up(t, block_t), block_t, block_s


def _first_query_block(j, start, block_s: int, block_t: int):
  """The first query block holding a query that sees slot block j (causal: slot <= start + t).
  lax.div on a non-negative numerator is floor division without jnp's sign fix-ups (which the
  Mosaic lowering of the scalar core does not take)."""
  return lax.div(jnp.maximum(j * block_s - start, 0), jnp.int32(block_t))


def _kernel(start_ref, last_ref, q_ref, lse_ref, k_ref, sum_ref, last_out_ref, *, kv, groups,
            t, block_t, block_s, scale):
  b, k, j, i = pl.program_id(0), pl.program_id(1), pl.program_id(2), pl.program_id(3)
  start = start_ref[b * kv + k]
  last = last_ref[b]

  @pl.when(i == 0)
  def _init():
    sum_ref[...] = jnp.zeros(sum_ref.shape, jnp.float32)
    last_out_ref[...] = jnp.zeros(last_out_ref.shape, jnp.float32)

  @pl.when((i >= _first_query_block(j, start, block_s, block_t)) & (j * block_s < start + t))
  def _accumulate():
    slot_1xN = j * block_s + lax.broadcasted_iota(jnp.int32, (1, block_s), 1)
    row_Mx1 = i * block_t + lax.broadcasted_iota(jnp.int32, (block_t, 1), 0)
    # Committed slots and the causal part of the block; padded rows never look (the ragged
    # last key block may hold NaN past S, and exp(NaN - NO_QUERY) is NaN, not 0).
    vis_MxN = (slot_1xN <= start + row_Mx1) & (row_Mx1 < t)
    is_last_Mx1 = row_Mx1 == last
    k_NxDh = k_ref[...]
    col = jnp.zeros((1, block_s), jnp.float32)
    col_last = jnp.zeros((1, block_s), jnp.float32)
    for g in range(groups):
      s_MxN = lax.dot_general(q_ref[g], k_NxDh, (((1,), (1,)), ((), ())),
                              preferred_element_type=jnp.float32) * scale
      # Invalid / padded rows carry lse = NO_QUERY, so their p is exactly 0.
      p_MxN = jnp.where(vis_MxN, jnp.exp(s_MxN - lse_ref[g]), 0.0)
      col += jnp.sum(p_MxN, axis=0, keepdims=True)
      col_last += jnp.sum(jnp.where(is_last_Mx1, p_MxN, 0.0), axis=0, keepdims=True)
    sum_ref[...] += col
    last_out_ref[...] += col_last


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def attn_stats_tpu(q_BxTxHxDh, k_BxKxSxDh, start_BxK, lse_BxTxH, query_valid_BxT,
                   block_mask_BxTxT=None, *, config: TpuConfig = TpuConfig(),
                   interpret: bool = False):
  """Mosaic entry point, causal block only; same contract as attn_stats_reference."""
  layout.require_causal(block_mask_BxTxT)
  b, t, h, dh = q_BxTxHxDh.shape
  kv, s = k_BxKxSxDh.shape[1:3]
  g = h // kv
  t_pad, block_t, block_s = plan(t, s, dh, config)
  n_t, n_s = t_pad // block_t, tiling.cdiv(s, block_s)
  q_BxKxGxTpxDh, lse_BxKxGxTp, clipped_start_BxK, last_B = layout.kernel_operands(
      q_BxTxHxDh, k_BxKxSxDh, start_BxK, lse_BxTxH, query_valid_BxT, t_pad)
  start_flat = clipped_start_BxK.reshape(b * kv)  # 1-D in SMEM: a 2-D SMEM array pads to 128 lanes.

  def query_index(bi, ki, j, i, start_ref, _):
    # Query blocks that see nothing of key block j repeat the first one that does: no DMA.
    first = _first_query_block(j, start_ref[bi * kv + ki], block_s, block_t)
    return bi, ki, 0, jnp.minimum(jnp.maximum(i, first), n_t - 1), 0

  out_block = pl.BlockSpec((None, None, 1, block_s), lambda bi, ki, j, i, *_: (bi, ki, 0, j))
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2,
      grid=(b, kv, n_s, n_t),
      in_specs=[pl.BlockSpec((None, None, g, block_t, dh), query_index),
                # lse a column per query row, [B, K, G, Tp, 1]
                pl.BlockSpec((None, None, g, block_t, 1), query_index),
                pl.BlockSpec((None, None, block_s, dh), lambda bi, ki, j, i, *_: (bi, ki, j, 0))],
      out_specs=[out_block, out_block])
  kernel = functools.partial(_kernel, kv=kv, groups=g, t=t, block_t=block_t, block_s=block_s,
                             scale=1.0 / math.sqrt(dh))
  itemsize = jnp.dtype(k_BxKxSxDh.dtype).itemsize
  sums, lasts = pl.pallas_call(
      kernel, grid_spec=grid_spec,
      out_shape=[jax.ShapeDtypeStruct((b, kv, 1, s), jnp.float32)] * 2,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "parallel", "arbitrary")),
      cost_estimate=pl.CostEstimate(
          flops=2 * b * h * t_pad * s * dh, transcendentals=b * h * t_pad * s,
          bytes_accessed=b * kv * s * dh * itemsize + n_s * q_BxKxGxTpxDh.size * itemsize),
      interpret=interpret, name="attn_stats_tpu",
  )(start_flat, last_B, q_BxKxGxTpxDh, lse_BxKxGxTp[..., None], k_BxKxSxDh)
  return sums[:, :, 0], lasts[:, :, 0]
