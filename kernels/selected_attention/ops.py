"""Selected attention over a KV cache - the dispatcher (reference | Pallas TPU | Pallas GPU).

``selected_attention(q, k_cache, v_cache, selected, k_new, v_new, block_mask)``: each (row, kv
head) attends to its selected cache slots plus the new block under its mask (reference.py has
the exact semantics; SentenceKV's decoding, arXiv 2504.00970); dispatch is kernels/dispatch.py's.
Selections come as slot masks; ``layout.from_indices`` / ``layout.from_spans`` build them from
per-head index lists or spans.
"""
from __future__ import annotations

from jaxtok_kernels import dispatch
from jaxtok_kernels.selected_attention import layout
from jaxtok_kernels.selected_attention.gpu import GpuConfig, selected_attention_gpu
from jaxtok_kernels.selected_attention.reference import selected_attention_reference
from jaxtok_kernels.selected_attention.tpu import TpuConfig, selected_attention_tpu

IMPLEMENTATIONS = dispatch.implementations(
    xla=selected_attention_reference,
    pallas=dispatch.Pallas(tpu=selected_attention_tpu, gpu=selected_attention_gpu,
                           tpu_config=TpuConfig, gpu_config=GpuConfig))


def selected_attention(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, selected_BxKxS,
                       k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, *,
                       implementation: dispatch.Implementation = None, config=None,
                       return_residuals: bool = False):
  """out [B, T, H, Dh], and with ``return_residuals`` (out, lse f32[B, T, H])."""
  dispatch.check(IMPLEMENTATIONS, implementation, config)
  args = (q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, selected_BxKxS, k_new_BxTxKxDh,
          v_new_BxTxKxDh, block_mask_BxTxT)
  layout.validate_inputs(*args)
  return dispatch.run("selected_attention", IMPLEMENTATIONS, implementation, *args,
                      config=config, return_residuals=return_residuals)
