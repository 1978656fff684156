"""Attention statistics per cache slot - the dispatcher (reference | Pallas TPU | Pallas GPU).

``attn_stats(q, k, start, lse, query_valid, block_mask=None)`` returns (sum, last) per
(row, kv head, slot); reference.py has the exact semantics. ``implementation=None`` picks the
platform's Pallas kernel (Mosaic on TPU, Triton on GPU) and falls back to the reference where
there is no accelerator or the kernel cannot take the input; ``"pallas"`` never falls back -
what the kernel cannot take (a non-causal block mask, a head dim Triton cannot tile) raises
NotImplementedError naming the reason, and on CPU it runs the TPU kernel in interpret mode;
``"xla"`` is the reference.
"""
from __future__ import annotations

from typing import Literal

from jaxtyping import Array, Bool, Float, Int

from jaxtok_kernels import common
from jaxtok_kernels.attn_stats import layout
from jaxtok_kernels.attn_stats.gpu import GpuConfig, attn_stats_gpu
from jaxtok_kernels.attn_stats.reference import attn_stats_reference
from jaxtok_kernels.attn_stats.tpu import TpuConfig, attn_stats_tpu

Implementation = Literal["pallas", "xla"] | None


def attn_stats(q_BxTxHxDh: Float[Array, "B T H Dh"], k_BxKxSxDh: Float[Array, "B K S Dh"],
               start_BxK: Int[Array, "B K"], lse_BxTxH: Float[Array, "B T H"],
               query_valid_BxT: Bool[Array, "B T"],
               block_mask_BxTxT: Bool[Array, "B T T"] | None = None, *,
               implementation: Implementation = None, config=None):
  """(sum f32[B, K, S], last f32[B, K, S]): attention probability per cache slot summed over
  the valid queries and the G query heads of each kv head, and the last valid query's row.

  k holds the block's keys at slots start .. start + T; block_mask None is causal (the only
  block the kernels take; a dense mask runs the reference). lse is the residual of the
  attention that produced the probabilities (``tree_attention(..., return_residuals=True)``).
  """
  if implementation not in (None, "pallas", "xla"):
    raise ValueError(f"implementation must be 'pallas', 'xla' or None, got {implementation!r}")
  if config is not None and not isinstance(config, (TpuConfig, GpuConfig)):
    raise ValueError(f"config must be a TpuConfig or GpuConfig, got {type(config).__name__}")
  layout.validate_inputs(q_BxTxHxDh, k_BxKxSxDh, start_BxK, lse_BxTxH, query_valid_BxT,
                         block_mask_BxTxT)
  args = (q_BxTxHxDh, k_BxKxSxDh, start_BxK, lse_BxTxH, query_valid_BxT)
  if implementation == "xla":
    return attn_stats_reference(*args, block_mask_BxTxT)
  platform = common.backend()
  if implementation is None and platform not in ("tpu", "gpu"):
    return attn_stats_reference(*args, block_mask_BxTxT)
  try:
    if block_mask_BxTxT is not None:
      raise NotImplementedError("attn_stats kernels take a causal block (block_mask_BxTxT=None);"
                                " a dense block mask runs the reference (implementation='xla')")
    return _pallas(platform, args, config)
  except NotImplementedError:
    if implementation == "pallas":
      raise
    return attn_stats_reference(*args, block_mask_BxTxT)


def _pallas(platform: str, args, config):
  if platform == "gpu":
    if isinstance(config, TpuConfig):
      raise ValueError("config: the GPU kernel takes a GpuConfig, got a TpuConfig")
    return attn_stats_gpu(*args, config=config or GpuConfig())
  if isinstance(config, GpuConfig):
    raise ValueError(f"config: the {platform} path runs the TPU kernel, which takes a "
                     "TpuConfig, got a GpuConfig")
  return attn_stats_tpu(*args, config=config or TpuConfig(), interpret=platform != "tpu")
