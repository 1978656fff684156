"""Attention and its slot statistics in one pass - the XLA path (CPU, or implementation="xla").

Where attention runs as jnp (XLA:CPU has no flash kernel), the probabilities p = softmax(q.k /
sqrt(Dh)) exist anyway, so their column sums cost one reduction instead of a second pass that
recomputes every q.k from the residual (the kernels' way, ops.py). ``attend`` is the masked
softmax of kernels/tree_attention/reference.py (``masked_attention``) over any number of key
segments, returning besides the output and lse the probability mass each key of each segment
received, summed over the T queries and the G query heads of its kv head:

    sum_seg[b, k, n] = sum_t sum_g p[b, t, kG + g, n]       over the keys n of the segment

Every query counts (the attention does not know which are padding); ``jaxtok.nn.attention``
uses these sums only when every query is valid and otherwise runs the exact second pass.
"""
from __future__ import annotations

from jaxtok_kernels.tree_attention.reference import masked_attention


def attend(q_BxTxHxDh, segments):
  """segments: [(k_BxKxNxDh, v_BxKxNxDh, vis_BxKxTxN bool)] (vis broadcastable). Returns
  (out [B, T, H, Dh] in q's dtype, lse f32[B, T, H] (MASKED where nothing is visible),
  [f32[B, K, N] per segment])."""
  out_BxTxHxDh, lse_BxTxH, p = masked_attention(q_BxTxHxDh, segments)
  return out_BxTxHxDh, lse_BxTxH, [p_BxKxGxTxN.sum(axis=(2, 3)) for p_BxKxGxTxN in p]
