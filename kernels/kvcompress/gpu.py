"""Plan application (merge + compaction) - Pallas GPU (Triton) kernel.

One program per (row x kv head, output block); a ``fori_loop`` over input blocks accumulates
onehot(dest)^T (mass * [k | v]) with ``jnp.dot`` (tensor cores), skipping input blocks whose
destination range misses the output block. Triton needs power-of-two sizes >= 16: the block is
a power of two and Dh must be one (others raise NotImplementedError; the dispatcher then uses
the reference unless ``implementation="pallas"`` was asked for).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pl_triton

from jaxtok_kernels import tiling
from jaxtok_kernels.kvcompress import layout
from jaxtok_kernels.kvcompress.reference import mass_sums


@dataclasses.dataclass(frozen=True, kw_only=True)
class GpuConfig:
  block: int = 64
  num_warps: int = 4
  num_stages: int = 2

  def __post_init__(self):
    tiling.validate_pow2("GpuConfig.block", self.block, tiling.TRITON_MIN_DOT)


def _kernel(lo_ref, hi_ref, dest_ref, mass_ref, k_ref, v_ref, ko_ref, vo_ref, *, block,
            n_blocks, dh):
  i = pl.program_id(1)
  first = i * block
  rows_Mx1 = first + lax.broadcasted_iota(jnp.int32, (block, 1), 0)

  def body(j, carry):
    acck, accv = carry
    sl = pl.ds(j * block, block)
    meets = (lo_ref[j] < first + block) & (hi_ref[j] >= first)
    w_MxN = jnp.where((dest_ref[0, sl][None, :] == rows_Mx1) & meets,
                      mass_ref[0, sl][None, :], 0.0)
    acck += jnp.dot(w_MxN, k_ref[sl, :].astype(jnp.float32))
    accv += jnp.dot(w_MxN, v_ref[sl, :].astype(jnp.float32))
    return acck, accv

  zero = jnp.zeros((block, dh), jnp.float32)
  acck, accv = lax.fori_loop(0, n_blocks, body, (zero, zero))
  ko_ref[...] = acck
  vo_ref[...] = accv


@functools.partial(jax.jit, static_argnames=("config", "interpret"))
def merge_slots_gpu(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS, *,
                    config: GpuConfig = GpuConfig(), interpret: bool = False):
  """(k_sum, v_sum f32[B, K, S, Dh], mass_sum f32[B, K, S]); same contract as
  reference.merge_slots_reference (the O(S) mass sums run in XLA)."""
  b, kh, s, dh = k_BxKxSxDh.shape
  tiling.require_triton_head_dim("merge_slots_gpu", dh)
  block = config.block
  s_pad = tiling.round_up(s, block)
  n_blocks = s_pad // block
  kf, vf, mf, df = layout.operands(k_BxKxSxDh, v_BxKxSxDh, mass_BxKxS, dest_BxKxS, s_pad)
  lo, hi = layout.block_ranges(df, block, s_pad)
  bk = b * kh
  whole = lambda shape: pl.BlockSpec(shape, lambda r, i: (r, 0, 0))
  ranges = pl.BlockSpec((None, n_blocks), lambda r, i: (r, 0))
  out = pl.BlockSpec((None, block, dh), lambda r, i: (r, i, 0))
  ko, vo = pl.pallas_call(
      functools.partial(_kernel, block=block, n_blocks=n_blocks, dh=dh),
      grid=(bk, n_blocks),
      in_specs=[ranges, ranges, whole((None, 1, s_pad)), whole((None, 1, s_pad)),
                whole((None, s_pad, dh)), whole((None, s_pad, dh))],
      out_specs=[out, out],
      out_shape=[jax.ShapeDtypeStruct((bk, s_pad, dh), jnp.float32)] * 2,
      compiler_params=pl_triton.CompilerParams(num_warps=config.num_warps,
                                               num_stages=config.num_stages),
      interpret=interpret, name="merge_slots_gpu",
  )(lo, hi, df, mf, kf, vf)
  return (ko[:, :s].reshape(b, kh, s, dh), vo[:, :s].reshape(b, kh, s, dh),
          mass_sums(mass_BxKxS, dest_BxKxS))
