"""Selected attention over a KV cache - the jnp reference (the oracle for the kernels).

SentenceKV (Zhu et al., arXiv 2504.00970 §3.3) decodes with each kv head attending only to its
chosen slots: the sink tokens, the recent ones and the tokens of the sentences it selected
(Quest, arXiv 2406.10774, does the same with pages). For batch row b, query t and query
head h of kv head k:

    out[b, t, h] = softmax_n(q_t . key_n / sqrt(Dh)) @ value_n
                   over {cache slots s with selected[b, k, s]} ++ {block tokens j with mask[b, t, j]}

with an fp32 softmax; out = 0 and lse = MASKED for a row with nothing visible. This is
tree attention (kernels/tree_attention) with the cache prefix ``s < cache_len[b, k]`` replaced
by an arbitrary selection per (row, kv head), so the reference is tree attention's masked
softmax over the two segments side by side (``tree_attention.reference.masked_attention``).
"""
from __future__ import annotations

from jaxtyping import Array, Bool, Float

from jaxtok_kernels.tree_attention.reference import block_segment, masked_attention


def selected_attention_reference(
    q_BxTxHxDh: Float[Array, "B T H Dh"], k_cache_BxKxSxDh: Float[Array, "B K S Dh"],
    v_cache_BxKxSxDh: Float[Array, "B K S Dh"], selected_BxKxS: Bool[Array, "B K S"],
    k_new_BxTxKxDh: Float[Array, "B T K Dh"], v_new_BxTxKxDh: Float[Array, "B T K Dh"],
    block_mask_BxTxT: Bool[Array, "B T T"], *, return_residuals: bool = False):
  """out [B, T, H, Dh] (and lse f32[B, T, H] with ``return_residuals``)."""
  out, lse_BxTxH, _ = masked_attention(q_BxTxHxDh, [
      (k_cache_BxKxSxDh, v_cache_BxKxSxDh, selected_BxKxS.astype(bool)[:, :, None]),
      block_segment(k_new_BxTxKxDh, v_new_BxTxKxDh, block_mask_BxTxT, k_cache_BxKxSxDh.dtype)])
  return (out, lse_BxTxH) if return_residuals else out
