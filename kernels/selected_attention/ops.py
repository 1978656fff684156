"""Selected attention over a KV cache - the dispatcher (reference | Pallas TPU | Pallas GPU).

``selected_attention(q, k_cache, v_cache, selected, k_new, v_new, block_mask)``: each (row, kv
head) attends to its selected cache slots plus the new block under its mask (reference.py has
the exact semantics; SentenceKV's decoding, arXiv 2504.00970). ``implementation=None`` picks
the platform's Pallas kernel (Mosaic on TPU, Triton on GPU) and falls back to the reference
where there is no accelerator or the kernel cannot take the shape; ``"pallas"`` never falls
back (NotImplementedError names the reason; on CPU the TPU kernel runs in interpret mode);
``"xla"`` is the reference. Selections come as slot masks; ``layout.from_indices`` /
``layout.from_spans`` build them from per-head index lists or spans.
"""
from __future__ import annotations

from typing import Literal

from jaxtok_kernels import common
from jaxtok_kernels.selected_attention import layout
from jaxtok_kernels.selected_attention.gpu import GpuConfig, selected_attention_gpu
from jaxtok_kernels.selected_attention.reference import selected_attention_reference
from jaxtok_kernels.selected_attention.tpu import TpuConfig, selected_attention_tpu

Implementation = Literal["pallas", "xla"] | None


def selected_attention(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, selected_BxKxS,
                       k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, *,
                       implementation: Implementation = None, config=None,
                       return_residuals: bool = False):
  """out [B, T, H, Dh], and with ``return_residuals`` (out, lse f32[B, T, H])."""
  if implementation not in (None, "pallas", "xla"):
    raise ValueError(f"implementation must be 'pallas', 'xla' or None, got {implementation!r}")
  if config is not None and not isinstance(config, (TpuConfig, GpuConfig)):
    raise ValueError(f"config must be a TpuConfig or GpuConfig, got {type(config).__name__}")
  args = (q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, selected_BxKxS, k_new_BxTxKxDh,
          v_new_BxTxKxDh, block_mask_BxTxT)
  layout.validate_inputs(*args)
  if implementation == "xla":
    return selected_attention_reference(*args, return_residuals=return_residuals)
  platform = common.backend()
  if implementation is None and platform not in ("tpu", "gpu"):
    return selected_attention_reference(*args, return_residuals=return_residuals)
  try:
    if platform == "gpu":
      if isinstance(config, TpuConfig):
        raise ValueError("config: the GPU kernel takes a GpuConfig, got a TpuConfig")
      return selected_attention_gpu(*args, config=config or GpuConfig(),
                                    return_residuals=return_residuals)
    if isinstance(config, GpuConfig):
      raise ValueError(f"config: the {platform} path runs the TPU kernel, which takes a "
                       "TpuConfig, got a GpuConfig")
    return selected_attention_tpu(*args, config=config or TpuConfig(),
                                  interpret=platform != "tpu", return_residuals=return_residuals)
  except NotImplementedError:
    if implementation == "pallas":
      raise
    return selected_attention_reference(*args, return_residuals=return_residuals)
