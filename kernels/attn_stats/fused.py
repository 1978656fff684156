"""Attention and its slot statistics in one pass - the XLA path (CPU, or implementation="xla").

Where attention runs as jnp (XLA:CPU has no flash kernel), the probabilities p = softmax(q.k /
sqrt(Dh)) exist anyway, so their column sums cost one reduction instead of a second pass that
recomputes every q.k from the residual (the kernels' way, ops.py). ``attend`` is the masked
softmax of kernels/tree_attention/reference.py over any number of key segments (a cache part
and a block part, side by side, never concatenated into a copy), returning besides the output
and lse the probability mass each key of each segment received, summed over the T queries and
the G query heads of its kv head:

    sum_seg[b, k, n] = sum_t sum_g p[b, t, kG + g, n]       over the keys n of the segment

Every query counts (the attention does not know which are padding); ``jaxtok.nn.attention``
uses these sums only when every query is valid and otherwise runs the exact second pass.
It also computes lse as m + log(l) from the softmax's own max and sum (the reference computes
a separate logsumexp: one exponential pass more).
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxtok_kernels.common import MASKED


def attend(q_BxTxHxDh, segments, *, value_dtype=None):
  """segments: [(k_BxKxNxDh, v_BxKxNxDh, vis_BxKxTxN bool)] (vis broadcastable). Returns
  (out [B, T, H, Dh] in q's dtype, lse f32[B, T, H] (MASKED where nothing is visible),
  [f32[B, K, N] per segment])."""
  b, t, h, dh = q_BxTxHxDh.shape
  kv = segments[0][0].shape[1]
  g = h // kv
  value_dtype = value_dtype or segments[0][1].dtype
  # kv-head-major rows r = g * T + t: every contraction is a batched matmul over (B, K).
  q_BxKxRxDh = q_BxTxHxDh.reshape(b, t, kv, g, dh).transpose(0, 2, 3, 1, 4).reshape(
      b, kv, g * t, dh)
  scale = 1.0 / jnp.sqrt(jnp.float32(dh))
  scores, vis = [], []
  for k_BxKxNxDh, _, vis_BxKxTxN in segments:
    n = k_BxKxNxDh.shape[2]
    s = jnp.einsum("bkrd,bknd->bkrn", q_BxKxRxDh, k_BxKxNxDh.astype(q_BxTxHxDh.dtype),
                   preferred_element_type=jnp.float32).reshape(b, kv, g, t, n) * scale
    v = jnp.broadcast_to(vis_BxKxTxN, (b, kv, t, n))[:, :, None]
    scores.append(jnp.where(v, s, MASKED))
    vis.append(v)
  m_BxKxGxT = scores[0].max(axis=-1)
  for s in scores[1:]:
    m_BxKxGxT = jnp.maximum(m_BxKxGxT, s.max(axis=-1))
  e = [jnp.where(v, jnp.exp(s - m_BxKxGxT[..., None]), 0.0) for s, v in zip(scores, vis)]
  l_BxKxGxT = sum(x.sum(axis=-1) for x in e)
  inv = jnp.where(l_BxKxGxT > 0, 1.0 / jnp.maximum(l_BxKxGxT, 1e-30), 0.0)[..., None]
  p = [x * inv for x in e]  # nothing visible -> 0, not a uniform average
  out_BxKxRxDh = sum(
      jnp.einsum("bkrn,bknd->bkrd", x.reshape(b, kv, g * t, -1).astype(value_dtype),
                 v_BxKxNxDh.astype(value_dtype), preferred_element_type=jnp.float32)
      for x, (_, v_BxKxNxDh, _) in zip(p, segments))
  out_BxTxHxDh = out_BxKxRxDh.reshape(b, kv, g, t, dh).transpose(0, 3, 1, 2, 4).reshape(
      b, t, h, dh).astype(q_BxTxHxDh.dtype)
  lse_BxKxGxT = jnp.where(l_BxKxGxT > 0, m_BxKxGxT + jnp.log(jnp.maximum(l_BxKxGxT, 1e-30)),
                          MASKED)
  lse_BxTxH = lse_BxKxGxT.transpose(0, 3, 1, 2).reshape(b, t, h)
  return out_BxTxHxDh, lse_BxTxH, [x.sum(axis=(2, 3)) for x in p]
