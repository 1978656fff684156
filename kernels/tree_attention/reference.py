"""Tree attention over a KV cache - the readable jnp reference (the oracle for the kernels).

Tree speculative decoding (SpecInfer arXiv 2305.09781, Medusa arXiv 2401.10774 §2.3) verifies a
draft *tree* of T tokens in one forward pass: every tree node attends to the whole committed
prefix held in the KV cache plus its own ancestors in the tree (a T x T "tree mask"). A chain
tree (causal block mask) is chunked prefill; T = 1 with a [[True]] mask is plain decoding.

For batch row b, query node t and query head h (kv head k = h // (H // K), GQA):

    scores = [q_t . k_cache[k, s] for s < cache_len[b, k]] ++ [q_t . k_new[j, k] for mask[b, t, j]]
    out[b, t, h] = softmax(scores / sqrt(Dh)) @ [v_cache[k, s] ... ++ v_new[j, k] ...]
    lse[b, t, h] = log(sum(exp(scores / sqrt(Dh))))      (the softmax residual, on request)

with an fp32 softmax, and out = 0 (lse = MASKED) for a row with nothing visible. Each (row, kv
head) has its own cache length: compression policies keep different slots per head. The
residual lets a caller rebuild any probability, exp(score - lse), without a second softmax
(attention statistics for KV compression; merging attention over cache segments). The cache is kv-head-major,
[B, K, S, Dh] (jaxtok.cache); the new block comes straight from the projections, [B, T, K, Dh].
This file spells that out densely, the cache and the block side by side, so it can be read
against the equation; ``masked_attention`` is the one masked softmax every jnp attention of this
package uses.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxtok_kernels.numerics import MASKED, lse


def masked_attention(q_BxTxHxDh: Float[Array, "B T H Dh"], segments):
  """The masked GQA softmax of the module docstring over key segments side by side - the cache
  and the block, never concatenated into a copy of the cache. Every jnp attention of this
  package is this function: tree and selected attention's references, attn_stats.fused.

  segments: [(k_BxKxNxDh, v_BxKxNxDh, vis_BxKxTxN)], vis bool and broadcastable to [B, K, T, N].
  Returns (out [B, T, H, Dh] in q's dtype, lse f32[B, T, H], [p f32[B, K, G, T, N] per
  segment]); a row with nothing visible gets out = 0, lse = MASKED and p = 0.

  lse is m + log l from the softmax's own max and sum, as the kernels compute it (numerics.lse),
  not a second logsumexp pass over the scores: the same value up to rounding, one exponential
  pass fewer, and the kernels' residual by construction.
  """
  b, t, h, dh = q_BxTxHxDh.shape
  kv = segments[0][0].shape[1]
  g = h // kv
  # GQA: query head h = k * G + g shares kv head k. Queries go kv-head-major, [B, K, G*T, Dh]
  # (row r = g * T + t), so every contraction is a plain batched matmul over (B, K): XLA:CPU
  # runs the "btkgd,bknd" form of the same product ~5x slower.
  q_BxKxRxDh = q_BxTxHxDh.reshape(b, t, kv, g, dh).transpose(0, 2, 3, 1, 4).reshape(
      b, kv, g * t, dh)
  scores, visible = [], []
  for k_BxKxNxDh, _, vis_BxKxTxN in segments:
    n = k_BxKxNxDh.shape[2]
    s_BxKxRxN = jnp.einsum("bkrd,bknd->bkrn", q_BxKxRxDh, k_BxKxNxDh,
                           preferred_element_type=jnp.float32)
    vis_BxKx1xTxN = jnp.broadcast_to(vis_BxKxTxN, (b, kv, t, n))[:, :, None]
    s_BxKxGxTxN = s_BxKxRxN.reshape(b, kv, g, t, n) / jnp.sqrt(jnp.float32(dh))
    scores.append(jnp.where(vis_BxKx1xTxN, s_BxKxGxTxN, MASKED))
    visible.append(vis_BxKx1xTxN)
  # fp32 softmax: bf16 exponentials lose the small weights that decide long-context outputs.
  # The max only shifts the exponent for stability; its gradient cancels.
  m_BxKxGxT = jax.lax.stop_gradient(functools.reduce(
      jnp.maximum, [jnp.max(s, axis=-1, initial=MASKED) for s in scores]))
  e = [jnp.where(v, jnp.exp(s - m_BxKxGxT[..., None]), 0.0) for s, v in zip(scores, visible)]
  l_BxKxGxT = sum(x.sum(axis=-1) for x in e)
  # Nothing visible -> p = 0, not a uniform average.
  p = [x / jnp.where(l_BxKxGxT > 0, l_BxKxGxT, 1.0)[..., None] for x in e]
  out_BxKxRxDh = sum(
      jnp.einsum("bkrn,bknd->bkrd",
                 x.reshape(b, kv, g * t, x.shape[-1]).astype(v_BxKxNxDh.dtype), v_BxKxNxDh,
                 preferred_element_type=jnp.float32)
      for x, (_, v_BxKxNxDh, _) in zip(p, segments))
  out_BxTxHxDh = out_BxKxRxDh.reshape(b, kv, g, t, dh).transpose(0, 3, 1, 2, 4).reshape(
      b, t, h, dh).astype(q_BxTxHxDh.dtype)
  lse_BxTxH = lse(m_BxKxGxT, l_BxKxGxT).transpose(0, 3, 1, 2).reshape(b, t, h)
  return out_BxTxHxDh, lse_BxTxH, p


def block_segment(k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, cache_dtype):
  """The new block as a segment of masked_attention: kv-head-major like the cache and in the
  cache dtype (as it will be stored); token j is visible to query t iff mask[b, t, j] (a mask
  broadcastable to [B, T, T])."""
  b, t = k_new_BxTxKxDh.shape[:2]
  mask_BxTxT = jnp.broadcast_to(block_mask_BxTxT.astype(bool), (b, t, t))
  return (jnp.swapaxes(k_new_BxTxKxDh.astype(cache_dtype), 1, 2),
          jnp.swapaxes(v_new_BxTxKxDh.astype(cache_dtype), 1, 2), mask_BxTxT[:, None])


def tree_attention_reference(
    q_BxTxHxDh: Float[Array, "B T H Dh"], k_cache_BxKxSxDh: Float[Array, "B K S Dh"],
    v_cache_BxKxSxDh: Float[Array, "B K S Dh"], cache_len_BxK: Int[Array, "B K"],
    k_new_BxTxKxDh: Float[Array, "B T K Dh"], v_new_BxTxKxDh: Float[Array, "B T K Dh"],
    block_mask_BxTxT: Bool[Array, "B T T"], *, return_residuals: bool = False):
  """Dense masked attention over the cache and the new block; see the module docstring.

  Returns out [B, T, H, Dh], and with ``return_residuals`` also lse f32[B, T, H].
  """
  s = k_cache_BxKxSxDh.shape[2]
  # Slot s of kv head k is visible to every node iff s < cache_len[b, k].
  cache_vis_BxKx1xS = (jnp.arange(s)[None, None, :] < cache_len_BxK[..., None])[:, :, None, :]
  out, lse_BxTxH, _ = masked_attention(q_BxTxHxDh, [
      (k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_vis_BxKx1xS),
      block_segment(k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, k_cache_BxKxSxDh.dtype)])
  return (out, lse_BxTxH) if return_residuals else out
