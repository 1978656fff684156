"""Attention statistics per cache slot - the jnp reference (the oracle for the kernels).

KV-compression policies score cache slots by the attention they received: H2O (arXiv
2306.14048, eq. 1) sums a[t, j] over every query so far, TOVA (arXiv 2401.06104 §3) reads the
current query's row, SnapKV (arXiv 2404.14469 §4.2) sums over the last window of queries, EMS
(arXiv 2412.08521) both. A flash-attention kernel never holds the [T, S] probabilities, but it
returns the softmax residual lse_t = log sum_j exp(q_t . k_j / sqrt(Dh)), and from it any
probability is rebuilt exactly, without a second softmax:

    p[t, j] = exp(q_t . k_j / sqrt(Dh) - lse_t)        for slots j visible to query t

For batch row b and kv head k (query heads h = k * G + g, GQA), over the cache slots s:

    sum[b, k, s]  = sum_{valid t} sum_g p[b, t, kG + g, s]
    last[b, k, s] = sum_g p[b, t_last, kG + g, s]       t_last = (number of valid queries) - 1

Slot s is visible to query t iff s < start[b, k] (committed) or it holds block token
j = s - start with mask[t, j] (the block is written at start .. start + T; mask None is causal:
j <= t). Padding queries (valid False) add nothing. This reference processes the queries in
chunks of ``chunk`` (memory O(chunk * S), never [T, S]).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Bool, Float, Int

CHUNK_T = 512


def visible_slots(t_C, start_BxK, t: int, s: int, mask_BxCxT=None):
  """bool[B, K, C, S]: slot s visible to each query t_C (block indices) of a chunk."""
  rel_BxKxS = jnp.arange(s)[None, None, :] - start_BxK[..., None]  # block index of each slot
  committed = (rel_BxKxS < 0)[:, :, None, :]
  in_block = ((rel_BxKxS >= 0) & (rel_BxKxS < t))[:, :, None, :]
  if mask_BxCxT is None:
    block_vis = rel_BxKxS[:, :, None, :] <= t_C[None, None, :, None]
  else:
    idx_BxKxS = jnp.clip(rel_BxKxS, 0, t - 1)
    block_vis = jax.vmap(lambda m_CxT, i_KxS: m_CxT[:, i_KxS].transpose(1, 0, 2))(
        mask_BxCxT, idx_BxKxS)
  return committed | (in_block & block_vis)


def last_query(query_valid_BxT):
  """Index of each row's last valid query (0 for a row without any)."""
  return jnp.maximum(jnp.sum(query_valid_BxT, axis=1) - 1, 0).astype(jnp.int32)


def last_row(q_BxTxHxDh, k_BxKxSxDh, start_BxK, lse_BxTxH, query_valid_BxT,
             block_mask_BxTxT=None):
  """f32[B, K, S]: the last valid query's probabilities per slot, summed over its G query heads
  (0 for a row without a valid query). One query per row: O(H * S * Dh)."""
  b, t, h, dh = q_BxTxHxDh.shape
  kh, s = k_BxKxSxDh.shape[1], k_BxKxSxDh.shape[2]
  last_B = last_query(query_valid_BxT)
  take = lambda x: jnp.take_along_axis(x, last_B[:, None, None], axis=1)[:, 0]  # noqa: E731
  q_BxKxGxDh = take(q_BxTxHxDh.reshape(b, t, h * dh)).reshape(b, kh, h // kh, dh)
  lse_BxKxG = take(lse_BxTxH).reshape(b, kh, h // kh)
  rel_BxKxS = jnp.arange(s)[None, None, :] - start_BxK[..., None]
  if block_mask_BxTxT is None:
    block_vis_BxKxS = rel_BxKxS <= last_B[:, None, None]
  else:
    row_BxT = take(jnp.broadcast_to(block_mask_BxTxT, (b, t, t)))
    block_vis_BxKxS = jax.vmap(lambda r_T, i_KxS: r_T[i_KxS])(row_BxT,
                                                              jnp.clip(rel_BxKxS, 0, t - 1))
  vis_BxKxS = (rel_BxKxS < 0) | ((rel_BxKxS < t) & block_vis_BxKxS)
  vis_BxKxS &= jnp.any(query_valid_BxT, axis=1)[:, None, None]
  scores = jnp.einsum("bkgd,bksd->bkgs", q_BxKxGxDh, k_BxKxSxDh.astype(q_BxTxHxDh.dtype),
                      preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(dh))
  p = jnp.where(vis_BxKxS[:, :, None], jnp.exp(scores - lse_BxKxG[..., None]), 0.0)
  return p.sum(axis=2)


def attn_stats_reference(
    q_BxTxHxDh: Float[Array, "B T H Dh"], k_BxKxSxDh: Float[Array, "B K S Dh"],
    start_BxK: Int[Array, "B K"], lse_BxTxH: Float[Array, "B T H"],
    query_valid_BxT: Bool[Array, "B T"], block_mask_BxTxT: Bool[Array, "B T T"] | None = None,
    *, chunk: int = CHUNK_T):
  """(sum f32[B, K, S], last f32[B, K, S]); see the module docstring."""
  b, t, h, dh = q_BxTxHxDh.shape
  kh, s = k_BxKxSxDh.shape[1], k_BxKxSxDh.shape[2]
  g = h // kh
  dense = None if block_mask_BxTxT is None else jnp.broadcast_to(block_mask_BxTxT, (b, t, t))
  keys = k_BxKxSxDh.astype(q_BxTxHxDh.dtype)
  sum_BxKxS = jnp.zeros((b, kh, s), jnp.float32)
  for c0 in range(0, t, chunk):
    c1 = min(c0 + chunk, t)
    t_C = jnp.arange(c0, c1)
    vis_BxKxCxS = visible_slots(t_C, start_BxK, t, s, None if dense is None else dense[:, c0:c1])
    vis_BxKxCxS &= query_valid_BxT[:, None, c0:c1, None]
    q_BxKxGxCxDh = q_BxTxHxDh[:, c0:c1].reshape(b, c1 - c0, kh, g, dh).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum("bkgcd,bksd->bkgcs", q_BxKxGxCxDh, keys,
                        preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(dh))
    lse_BxKxGxC = lse_BxTxH[:, c0:c1].reshape(b, c1 - c0, kh, g).transpose(0, 2, 3, 1)
    p = jnp.where(vis_BxKxCxS[:, :, None], jnp.exp(scores - lse_BxKxGxC[..., None]), 0.0)
    sum_BxKxS += p.sum(axis=(2, 3))
  return sum_BxKxS, last_row(q_BxTxHxDh, k_BxKxSxDh, start_BxK, lse_BxTxH, query_valid_BxT,
                             dense)
