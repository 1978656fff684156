"""Plan application (merge + compaction) - Pallas TPU (Mosaic) kernel.

Grid (row x kv head, output block, input block): output block i accumulates, over input blocks
j, the one-hot contraction onehot(dest)^T (mass * [k | v]) in VMEM (an MXU matmul of
(block, block) x (block, Dh)); the last input block writes the sums. Pairs (i, j) that cannot
meet - no destination of input block j falls inside output block i - are skipped with
``pl.when`` on per-block destination ranges that arrive by scalar prefetch; a compaction's
destinations are monotone, so only about two input blocks per output block do work. The trash
class (any destination outside [0, S)) never matches an output row.
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import tpu as pltpu

from jaxtok_kernels import tiling
from jaxtok_kernels.kvcompress import layout
from jaxtok_kernels.kvcompress.reference import mass_sums


@dataclasses.dataclass(frozen=True, kw_only=True)
class TpuConfig:
  """block: slots per output and input block (a multiple of 128: it is the lane dimension of
  the destination row)."""
  block: int = 256

  def __post_init__(self):
    if self.block < 128 or self.block % 128:
      raise tiling.BlockSizeError(f"TpuConfig.block = {self.block} must be a positive multiple "
                                  "of 128 (TPU lane tiling)")


def _kernel(lo_ref, hi_ref, dest_ref, mass_ref, k_ref, v_ref, ko_ref, vo_ref, acck, accv, *,
            block, n_blocks):
  r, i, j = pl.program_id(0), pl.program_id(1), pl.program_id(2)

  @pl.when(j == 0)
  def _init():
    acck[...] = jnp.zeros(acck.shape, jnp.float32)
    accv[...] = jnp.zeros(accv.shape, jnp.float32)

  first = i * block
  meets = (lo_ref[r * n_blocks + j] < first + block) & (hi_ref[r * n_blocks + j] >= first)

  @pl.when(meets)
  def _accumulate():
    rows_Mx1 = first + lax.broadcasted_iota(jnp.int32, (block, 1), 0)
    w_MxN = jnp.where(dest_ref[...] == rows_Mx1, mass_ref[...], 0.0)
    hi = lax.Precision.HIGHEST
    acck[...] += jnp.dot(w_MxN, k_ref[...].astype(jnp.float32), precision=hi,
                         preferred_element_type=jnp.float32)
    accv[...] += jnp.dot(w_MxN, v_ref[...].astype(jnp.float32), precision=hi,
                         preferred_element_type=jnp.float32)

  @pl.when(j == n_blocks - 1)
  def _write():
    ko_ref[...] = acck[...]
    vo_ref[...] = accv[...]


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def merge_slots_tpu(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS, *,
                    config: TpuConfig = TpuConfig(), interpret: bool = False):
  """(k_sum, v_sum f32[B, K, S, Dh], mass_sum f32[B, K, S]); same contract as
  reference.merge_slots_reference (the O(S) mass sums run in XLA)."""
  b, kh, s, dh = k_BxKxSxDh.shape
  block = min(config.block, tiling.round_up(s, 128))
  s_pad = tiling.round_up(s, block)
  n_blocks = s_pad // block
  kf, vf, mf, df = layout.operands(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS, s_pad)
  lo, hi = layout.block_ranges(df, block, s_pad)
  bk = b * kh
  row_in = pl.BlockSpec((None, 1, block), lambda r, i, j, *_: (r, 0, j))
  kv_in = pl.BlockSpec((None, block, dh), lambda r, i, j, *_: (r, j, 0))
  kv_out = pl.BlockSpec((None, block, dh), lambda r, i, j, *_: (r, i, 0))
  grid_spec = pltpu.PrefetchScalarGridSpec(
      num_scalar_prefetch=2, grid=(bk, n_blocks, n_blocks),
      in_specs=[row_in, row_in, kv_in, kv_in], out_specs=[kv_out, kv_out],
      scratch_shapes=[pltpu.VMEM((block, dh), jnp.float32),
                      pltpu.VMEM((block, dh), jnp.float32)])
  out_shape = [jax.ShapeDtypeStruct((bk, s_pad, dh), jnp.float32)] * 2
  ko, vo = pl.pallas_call(
      functools.partial(_kernel, block=block, n_blocks=n_blocks), grid_spec=grid_spec,
      out_shape=out_shape,
      compiler_params=pltpu.CompilerParams(
          dimension_semantics=("parallel", "parallel", "arbitrary")),
      interpret=interpret, name="merge_slots_tpu",
  )(lo.reshape(-1), hi.reshape(-1), df, mf, kf, vf)
  return (ko[:, :s].reshape(b, kh, s, dh), vo[:, :s].reshape(b, kh, s, dh),
          mass_sums(mass_BxKxS, dest_BxKxS))
