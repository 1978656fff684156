"""Tree attention over a KV cache - the dispatcher (reference | Pallas TPU | Pallas GPU).

The op every jaxtok attention layer with a cache calls: decoding (T = 1), chunked prefill
(causal block mask) and tree speculative verification (SpecInfer arXiv 2305.09781, ancestor
mask) are the same computation with different block masks. See reference.py for the exact
semantics; the kernels must match it (tests/kernels).

Dispatch is kernels/dispatch.py's (DESIGN.md decision 9): ``implementation=None`` picks the
Pallas kernel of the platform (Mosaic on TPU, Triton on GPU) and falls back to the reference when
the kernel cannot take the shape or when there is no accelerator; an explicit ``"pallas"`` never
falls back - a shape the kernel cannot tile raises ``NotImplementedError`` with the reason, so a
benchmark can never time the reference and call it the kernel.
"""
from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxtok_kernels import dispatch
from jaxtok_kernels.tree_attention import layout
from jaxtok_kernels.tree_attention.gpu import GpuConfig, tree_attention_gpu
from jaxtok_kernels.tree_attention.reference import tree_attention_reference
from jaxtok_kernels.tree_attention.tpu import TpuConfig, tree_attention_tpu

Config = TpuConfig | GpuConfig

IMPLEMENTATIONS = dispatch.implementations(
    xla=tree_attention_reference,
    pallas=dispatch.Pallas(tpu=tree_attention_tpu, gpu=tree_attention_gpu, tpu_config=TpuConfig,
                           gpu_config=GpuConfig))


def tree_attention(
    q_BxTxHxDh: Float[Array, "B T H Dh"], k_cache_BxKxSxDh: Float[Array, "B K S Dh"],
    v_cache_BxKxSxDh: Float[Array, "B K S Dh"], cache_len_BxK: Int[Array, "B K"],
    k_new_BxTxKxDh: Float[Array, "B T K Dh"], v_new_BxTxKxDh: Float[Array, "B T K Dh"],
    block_mask_BxTxT: Bool[Array, "B T T"], *, implementation: dispatch.Implementation = None,
    config: Config | None = None, return_residuals: bool = False):
  """Attention of T new nodes over the cache slots < cache_len[b, k] plus the block under its
  mask. Returns out [B, T, H, Dh], and with ``return_residuals`` (out, lse f32[B, T, H]).

  The cache is kv-head-major, [B, K, S, Dh] (jaxtok.cache's layout), which the kernels tile
  in place; the new block is [B, T, K, Dh], as the projections produce it.

  implementation: "xla" - the jnp reference; "pallas" - the Pallas kernel for the default
  backend (Mosaic on TPU, Triton on GPU, the TPU kernel in interpret mode on CPU), raising
  NotImplementedError where it cannot run; None - Pallas on TPU/GPU where it can run, else the
  reference. config: the kernel's tiling (``TpuConfig`` or ``GpuConfig``, matching the
  platform); an illegal block raises BlockSizeError.
  """
  dispatch.check(IMPLEMENTATIONS, implementation, config)
  args = (q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_len_BxK, k_new_BxTxKxDh,
          v_new_BxTxKxDh, block_mask_BxTxT)
  layout.validate_inputs(*args)
  b, t = q_BxTxHxDh.shape[:2]
  args = args[:-1] + (jnp.broadcast_to(block_mask_BxTxT, (b, t, t)),)
  return dispatch.run("tree_attention", IMPLEMENTATIONS, implementation, *args, config=config,
                      return_residuals=return_residuals)
