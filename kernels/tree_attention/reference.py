"""Tree attention over a KV cache - the readable jnp reference (the oracle for the kernels).

Tree speculative decoding (SpecInfer arXiv 2305.09781, Medusa arXiv 2401.10774 §2.3) verifies a
draft *tree* of T tokens in one forward pass: every tree node attends to the whole committed
prefix held in the KV cache plus its own ancestors in the tree (a T x T "tree mask"). A chain
tree (causal block mask) is chunked prefill; T = 1 with a [[True]] mask is plain decoding.

For batch row b, query node t and query head h (kv head k = h // (H // K), GQA):

    scores = [q_t . k_cache[k, s] for s < cache_len[b]] ++ [q_t . k_new[j, k] for mask[b, t, j]]
    out[b, t, h] = softmax(scores / sqrt(Dh)) @ [v_cache[k, s] ... ++ v_new[j, k] ...]

with an fp32 softmax, and out = 0 for a row with nothing visible. The cache is kv-head-major,
[B, K, S, Dh] (jaxtok.cache); the new block comes straight from the projections, [B, T, K, Dh].
This file spells that out densely, one kv group at a time, so it can be read against the
equation.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

# Finite mask value: -inf would turn a fully masked row into NaN (inf - inf) before we zero it.
_MASKED = -1e30


def tree_attention_reference(
    q_BxTxHxDh: Float[Array, "B T H Dh"], k_cache_BxKxSxDh: Float[Array, "B K S Dh"],
    v_cache_BxKxSxDh: Float[Array, "B K S Dh"], cache_len_B: Int[Array, "B"],
    k_new_BxTxKxDh: Float[Array, "B T K Dh"], v_new_BxTxKxDh: Float[Array, "B T K Dh"],
    block_mask_BxTxT: Bool[Array, "B T T"]) -> Float[Array, "B T H Dh"]:
  """Dense masked attention over concat(cache, new block); see the module docstring."""
  b, t, h, dh = q_BxTxHxDh.shape
  kv, s = k_cache_BxKxSxDh.shape[1], k_cache_BxKxSxDh.shape[2]
  g = h // kv
  cache_dtype = k_cache_BxKxSxDh.dtype

  # Keys/values the block can see: the whole cache (S slots) followed by the block (T nodes).
  def with_block(cache_BxKxSxDh, new_BxTxKxDh):
    new_BxKxTxDh = jnp.swapaxes(new_BxTxKxDh.astype(cache_dtype), 1, 2)
    return jnp.concatenate([cache_BxKxSxDh, new_BxKxTxDh], axis=2)
  k_BxKxNxDh = with_block(k_cache_BxKxSxDh, k_new_BxTxKxDh)
  v_BxKxNxDh = with_block(v_cache_BxKxSxDh, v_new_BxTxKxDh)
  # Visibility: slot s is visible to every node iff s < cache_len; node j iff mask[t, j].
  cache_vis_BxTxS = jnp.broadcast_to(
      (jnp.arange(s)[None, :] < cache_len_B[:, None])[:, None, :], (b, t, s))
  vis_BxTxN = jnp.concatenate([cache_vis_BxTxS, block_mask_BxTxT.astype(bool)], axis=-1)

  # GQA: query head h = k * G + g shares kv head k. Queries go kv-head-major, [B, K, G*T, Dh]
  # (row r = g * T + t), so both contractions are plain batched matmuls over (B, K): XLA:CPU
  # runs the "btkgd,bknd" form of the same product ~5x slower.
  q_BxKxRxDh = q_BxTxHxDh.reshape(b, t, kv, g, dh).transpose(0, 2, 3, 1, 4).reshape(
      b, kv, g * t, dh)
  scores_BxKxRxN = jnp.einsum("bkrd,bknd->bkrn", q_BxKxRxDh, k_BxKxNxDh,
                              preferred_element_type=jnp.float32)
  scores_BxKxGxTxN = scores_BxKxRxN.reshape(b, kv, g, t, -1) / jnp.sqrt(jnp.float32(dh))
  vis = vis_BxTxN[:, None, None, :, :]
  # fp32 softmax: bf16 exponentials lose the small weights that decide long-context outputs.
  p_BxKxGxTxN = jax.nn.softmax(jnp.where(vis, scores_BxKxGxTxN, _MASKED), axis=-1)
  p_BxKxGxTxN = jnp.where(vis, p_BxKxGxTxN, 0.0)  # nothing visible -> 0, not a uniform average
  out_BxKxRxDh = jnp.einsum("bkrn,bknd->bkrd",
                            p_BxKxGxTxN.reshape(b, kv, g * t, -1).astype(cache_dtype),
                            v_BxKxNxDh, preferred_element_type=jnp.float32)
  out_BxTxKxGxDh = out_BxKxRxDh.reshape(b, kv, g, t, dh).transpose(0, 3, 1, 2, 4)
  return out_BxTxKxGxDh.reshape(b, t, h, dh).astype(q_BxTxHxDh.dtype)
