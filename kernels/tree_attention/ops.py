"""Tree attention over a KV cache - the dispatcher (reference | Pallas TPU | Pallas GPU).

The op every jaxtok attention layer with a cache calls: decoding (T = 1), chunked prefill
(causal block mask) and tree speculative verification (SpecInfer arXiv 2305.09781, ancestor
mask) are the same computation with different block masks. See reference.py for the exact
semantics; the kernels must match it (tests/kernels).
"""
from __future__ import annotations

from typing import Literal

import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxtok_kernels import common
from jaxtok_kernels.tree_attention import layout
from jaxtok_kernels.tree_attention.gpu import tree_attention_gpu
from jaxtok_kernels.tree_attention.reference import tree_attention_reference
from jaxtok_kernels.tree_attention.tpu import tree_attention_tpu

Implementation = Literal["pallas", "xla"] | None


def tree_attention(
    q_BxTxHxDh: Float[Array, "B T H Dh"], k_cache_BxKxSxDh: Float[Array, "B K S Dh"],
    v_cache_BxKxSxDh: Float[Array, "B K S Dh"], cache_len_B: Int[Array, "B"],
    k_new_BxTxKxDh: Float[Array, "B T K Dh"], v_new_BxTxKxDh: Float[Array, "B T K Dh"],
    block_mask_BxTxT: Bool[Array, "B T T"], *, implementation: Implementation = None,
    block_s: int | None = None) -> Float[Array, "B T H Dh"]:
  """Attention of T new nodes over the cache slots < cache_len plus the block under its mask.

  The cache is kv-head-major, [B, K, S, Dh] (jaxtok.cache's layout), which the kernels tile
  in place; the new block is [B, T, K, Dh], as the projections produce it.

  implementation: "xla" - the jnp reference; "pallas" - the Pallas kernel for the default
  backend (Mosaic on TPU, Triton on GPU, the TPU kernel in interpret mode on CPU); None - Pallas
  on TPU/GPU, the reference elsewhere. A shape the kernel cannot tile (NotImplementedError)
  falls back to the reference; an explicit illegal `block_s` raises BlockSizeError.
  """
  args = (q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_len_B, k_new_BxTxKxDh,
          v_new_BxTxKxDh, block_mask_BxTxT)
  if implementation not in (None, "pallas", "xla"):
    raise ValueError(f"implementation must be 'pallas', 'xla' or None, got {implementation!r}")
  layout.validate_inputs(*args)
  b, t = q_BxTxHxDh.shape[:2]
  block_mask_BxTxT = jnp.broadcast_to(block_mask_BxTxT, (b, t, t))
  args = args[:-1] + (block_mask_BxTxT,)
  if implementation == "xla":
    return tree_attention_reference(*args)
  platform = common.backend()
  if implementation is None and platform not in ("tpu", "gpu"):
    return tree_attention_reference(*args)
  try:
    if platform == "gpu":
      return tree_attention_gpu(*args, block_s=block_s)
    # TPU compiles the Mosaic kernel; elsewhere the same kernel runs in the interpreter.
    return tree_attention_tpu(*args, block_s=block_s, interpret=platform != "tpu")
  except NotImplementedError:
    return tree_attention_reference(*args)
