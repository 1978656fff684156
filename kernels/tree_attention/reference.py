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
This file spells that out densely, one kv group at a time, so it can be read against the
equation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

from jaxtok_kernels.common import MASKED


def tree_attention_reference(
    q_BxTxHxDh: Float[Array, "B T H Dh"], k_cache_BxKxSxDh: Float[Array, "B K S Dh"],
    v_cache_BxKxSxDh: Float[Array, "B K S Dh"], cache_len_BxK: Int[Array, "B K"],
    k_new_BxTxKxDh: Float[Array, "B T K Dh"], v_new_BxTxKxDh: Float[Array, "B T K Dh"],
    block_mask_BxTxT: Bool[Array, "B T T"], *, return_residuals: bool = False):
  """Dense masked attention over concat(cache, new block); see the module docstring.

  Returns out [B, T, H, Dh], and with ``return_residuals`` also lse f32[B, T, H].
  """
  b, t, h, dh = q_BxTxHxDh.shape
  kv, s = k_cache_BxKxSxDh.shape[1], k_cache_BxKxSxDh.shape[2]
  g = h // kv
  cache_dtype = k_cache_BxKxSxDh.dtype
  # The new block kv-head-major like the cache, in the cache dtype (as it will be stored).
  k_new_BxKxTxDh = jnp.swapaxes(k_new_BxTxKxDh.astype(cache_dtype), 1, 2)
  v_new_BxKxTxDh = jnp.swapaxes(v_new_BxTxKxDh.astype(cache_dtype), 1, 2)
  # Visibility: slot s of kv head k is visible to every node iff s < cache_len[b, k]; node j
  # iff mask[t, j].
  cache_vis_BxKxTxS = jnp.broadcast_to(
      (jnp.arange(s)[None, None, :] < cache_len_BxK[..., None])[:, :, None, :], (b, kv, t, s))
  block_vis_BxKxTxT = jnp.broadcast_to(block_mask_BxTxT.astype(bool)[:, None], (b, kv, t, t))
  vis_BxKxTxN = jnp.concatenate([cache_vis_BxKxTxS, block_vis_BxKxTxT], axis=-1)

  # GQA: query head h = k * G + g shares kv head k. Queries go kv-head-major, [B, K, G*T, Dh]
  # (row r = g * T + t), so every contraction is a plain batched matmul over (B, K): XLA:CPU
  # runs the "btkgd,bknd" form of the same product ~5x slower.
  q_BxKxRxDh = q_BxTxHxDh.reshape(b, t, kv, g, dh).transpose(0, 2, 3, 1, 4).reshape(
      b, kv, g * t, dh)

  def scores(keys_BxKxNxDh):
    return jnp.einsum("bkrd,bknd->bkrn", q_BxKxRxDh, keys_BxKxNxDh,
                      preferred_element_type=jnp.float32)
  # Scores against the cache and against the block, side by side: the N = S + T columns of
  # concat(cache, block) without copying the cache (a full copy per layer per decode step).
  scores_BxKxRxN = jnp.concatenate([scores(k_cache_BxKxSxDh), scores(k_new_BxKxTxDh)], -1)
  scores_BxKxGxTxN = scores_BxKxRxN.reshape(b, kv, g, t, s + t) / jnp.sqrt(jnp.float32(dh))
  vis = vis_BxKxTxN[:, :, None, :, :]
  # fp32 softmax: bf16 exponentials lose the small weights that decide long-context outputs.
  masked_BxKxGxTxN = jnp.where(vis, scores_BxKxGxTxN, MASKED)
  p_BxKxGxTxN = jax.nn.softmax(masked_BxKxGxTxN, axis=-1)
  p_BxKxGxTxN = jnp.where(vis, p_BxKxGxTxN, 0.0)  # nothing visible -> 0, not a uniform average
  p_BxKxRxN = p_BxKxGxTxN.reshape(b, kv, g * t, s + t).astype(cache_dtype)

  def attend(p_BxKxRxM, values_BxKxMxDh):
    return jnp.einsum("bkrm,bkmd->bkrd", p_BxKxRxM, values_BxKxMxDh,
                      preferred_element_type=jnp.float32)
  out_BxKxRxDh = attend(p_BxKxRxN[..., :s], v_cache_BxKxSxDh) + attend(p_BxKxRxN[..., s:],
                                                                       v_new_BxKxTxDh)
  out_BxTxKxGxDh = out_BxKxRxDh.reshape(b, kv, g, t, dh).transpose(0, 3, 1, 2, 4)
  out_BxTxHxDh = out_BxTxKxGxDh.reshape(b, t, h, dh).astype(q_BxTxHxDh.dtype)
  if not return_residuals:
    return out_BxTxHxDh
  any_BxKxGxT = jnp.any(vis, axis=-1)
  lse_BxKxGxT = jnp.where(any_BxKxGxT, jax.nn.logsumexp(masked_BxKxGxTxN, axis=-1), MASKED)
  return out_BxTxHxDh, lse_BxKxGxT.transpose(0, 3, 1, 2).reshape(b, t, h)
