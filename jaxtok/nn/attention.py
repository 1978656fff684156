"""Scaled dot-product attention with GQA and fp32 softmax (the plain-XLA path).

Two entry points:
* ``attention``: queries against keys of the same call (no cache), any boolean mask.
* ``cached_attention``: queries of a new block against the cache slots ``< cache_len`` (all
  visible) plus the new block itself under ``block_mask`` (causal chain, tree, or single token).
  That op is ``jaxtok_kernels.tree_attention`` (Pallas on TPU/GPU, its jnp reference elsewhere).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float

# Imported with this module, not lazily while tracing: importing Pallas registers JAX config
# options, and doing that mid-trace invalidates every jit cache entry made before it.
import jaxtok_kernels

# Finite mask value: -inf would turn fully-masked rows into NaN.
_MASKED = -1e30


def _masked_softmax_attend(q_BxTxKxGxDh, k_BxSxKxDh, v_BxSxKxDh, mask_BxTxS):
  b, t, kh, g, dh = q_BxTxKxGxDh.shape
  s_len = k_BxSxKxDh.shape[1]
  # Head-major operands make both contractions plain batched matmuls over (B, K) with G*T query
  # rows; contracting the [B, T, K, G, Dh] layout directly is ~30% slower fwd+bwd on XLA CPU.
  q_BxKxGTxDh = q_BxTxKxGxDh.transpose(0, 2, 3, 1, 4).reshape(b, kh, g * t, dh)
  k_BxKxSxDh = k_BxSxKxDh.transpose(0, 2, 1, 3)
  v_BxKxSxDh = v_BxSxKxDh.transpose(0, 2, 1, 3)
  s_BxKxGTxS = jnp.einsum("bkqd,bksd->bkqs", q_BxKxGTxDh, k_BxKxSxDh,
                          preferred_element_type=jnp.float32)
  s_BxKxGxTxS = s_BxKxGTxS.reshape(b, kh, g, t, s_len) / jnp.sqrt(jnp.float32(dh))
  mask = mask_BxTxS[:, None, None, :, :]
  s_BxKxGxTxS = jnp.where(mask, s_BxKxGxTxS, _MASKED)
  p = jax.nn.softmax(s_BxKxGxTxS, axis=-1)
  p = jnp.where(mask, p, 0.0)  # rows with nothing visible give 0, not a uniform average
  o_BxKxGTxDh = jnp.einsum("bkqs,bksd->bkqd",
                           p.reshape(b, kh, g * t, s_len).astype(v_BxSxKxDh.dtype), v_BxKxSxDh,
                           preferred_element_type=jnp.float32)
  return o_BxKxGTxDh.reshape(b, kh, g, t, dh).transpose(0, 3, 1, 2, 4)


def _group(q_BxTxHxDh, kv_heads):
  b, t, h, dh = q_BxTxHxDh.shape
  return q_BxTxHxDh.reshape(b, t, kv_heads, h // kv_heads, dh)


def attention(q_BxTxHxDh: Float[Array, "B T H Dh"], k_BxSxKxDh: Float[Array, "B S K Dh"],
              v_BxSxKxDh: Float[Array, "B S K Dh"],
              mask_BxTxS: Bool[Array, "B T S"]) -> Float[Array, "B T H Dh"]:
  b, t, h, dh = q_BxTxHxDh.shape
  k = k_BxSxKxDh.shape[2]
  out = _masked_softmax_attend(_group(q_BxTxHxDh, k), k_BxSxKxDh, v_BxSxKxDh,
                               jnp.broadcast_to(mask_BxTxS, (b, t, k_BxSxKxDh.shape[1])))
  return out.reshape(b, t, h, dh).astype(q_BxTxHxDh.dtype)


def cached_attention(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_len_B,
                     k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT):
  # None: the Pallas kernel on TPU/GPU, this module's reference semantics elsewhere. The cache is
  # kv-head-major ([B, K, S, Dh], jaxtok.cache) so the kernel tiles it without a relayout.
  return jaxtok_kernels.tree_attention(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh,
                                       cache_len_B, k_new_BxTxKxDh, v_new_BxTxKxDh,
                                       block_mask_BxTxT, implementation=None)
