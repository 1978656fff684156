"""Attention statistics per cache slot - the dispatcher (reference | Pallas TPU | Pallas GPU).

``attn_stats(q, k, start, lse, query_valid, block_mask=None)`` returns (sum, last) per
(row, kv head, slot); reference.py has the exact semantics. Dispatch is kernels/dispatch.py's:
what the kernels cannot take (a non-causal block mask, a head dim Triton cannot tile) runs the
reference, unless ``implementation="pallas"`` asked for the kernel, which then raises the reason.
"""
from __future__ import annotations

from jaxtyping import Array, Bool, Float, Int

from jaxtok_kernels import dispatch
from jaxtok_kernels.attn_stats import layout
from jaxtok_kernels.attn_stats.gpu import GpuConfig, attn_stats_gpu
from jaxtok_kernels.attn_stats.reference import attn_stats_reference
from jaxtok_kernels.attn_stats.tpu import TpuConfig, attn_stats_tpu

IMPLEMENTATIONS = dispatch.implementations(
    xla=attn_stats_reference,
    pallas=dispatch.Pallas(tpu=attn_stats_tpu, gpu=attn_stats_gpu, tpu_config=TpuConfig,
                           gpu_config=GpuConfig))


def attn_stats(q_BxTxHxDh: Float[Array, "B T H Dh"], k_BxKxSxDh: Float[Array, "B K S Dh"],
               start_BxK: Int[Array, "B K"], lse_BxTxH: Float[Array, "B T H"],
               query_valid_BxT: Bool[Array, "B T"],
               block_mask_BxTxT: Bool[Array, "B T T"] | None = None, *,
               implementation: dispatch.Implementation = None, config=None):
  """(sum f32[B, K, S], last f32[B, K, S]): attention probability per cache slot summed over
  the valid queries and the G query heads of each kv head, and the last valid query's row.

  k holds the block's keys at slots start .. start + T; block_mask None is causal (the only
  block the kernels take; a dense mask runs the reference). lse is the residual of the
  attention that produced the probabilities (``tree_attention(..., return_residuals=True)``).
  """
  dispatch.check(IMPLEMENTATIONS, implementation, config)
  layout.validate_inputs(q_BxTxHxDh, k_BxKxSxDh, start_BxK, lse_BxTxH, query_valid_BxT,
                         block_mask_BxTxT)
  return dispatch.run("attn_stats", IMPLEMENTATIONS, implementation, q_BxTxHxDh, k_BxKxSxDh,
                      start_BxK, lse_BxTxH, query_valid_BxT, block_mask_BxTxT, config=config)
