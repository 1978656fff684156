"""Input validation and the kernel layout of attention statistics (TPU and GPU kernels).

The kernels take a causal block (mask None: block token j is visible to query t iff j <= t);
the reference also takes any [B, T, T] block mask. Query validity and the query padding are
folded into the residual: an invalid or padded query row gets lse = NO_QUERY (+1e30), so its
p = exp(score - lse) is exactly 0 and the kernels need no validity input. The G query heads of
a kv head stay a separate axis, [B, K, G, Tp, Dh], so one program reads a kv head's key block
once for all of its query heads (the GQA fold of kernels/tree_attention).
"""
from __future__ import annotations

import jax.numpy as jnp

from jaxtok_kernels import tiling, validate
from jaxtok_kernels.attn_stats.reference import last_query

NO_QUERY = 1e30  # lse of a row that must contribute nothing: exp(score - 1e30) == 0


def validate_inputs(q, k, start, lse, query_valid, block_mask) -> None:
  """Raise ValueError naming the argument and the expected shape for inconsistent inputs."""
  if q.ndim != 4:
    raise ValueError(f"q_BxTxHxDh must have rank 4 [B, T, H, Dh], got shape {q.shape}")
  b, t, h, dh = q.shape
  if k.ndim != 4 or k.shape[0] != b or k.shape[3] != dh:
    raise ValueError(f"k_BxKxSxDh must have shape [B={b}, K, S, Dh={dh}] (kv-head-major, the "
                     f"block written at start), got {k.shape}")
  kv, s = k.shape[1], k.shape[2]
  if kv < 1 or h % kv:
    raise ValueError(f"query heads H={h} must be a multiple of the kv heads K={kv} (GQA); "
                     f"q_BxTxHxDh {q.shape}, k_BxKxSxDh {k.shape}")
  if start.shape != (b, kv) or not jnp.issubdtype(start.dtype, jnp.integer):
    raise ValueError(f"start_BxK must be an integer array of shape [B, K] = {(b, kv)}, got "
                     f"{start.shape} {start.dtype}")
  if lse.shape != (b, t, h):
    raise ValueError(f"lse_BxTxH must have shape [B, T, H] = {(b, t, h)}, got {lse.shape}")
  if query_valid.shape != (b, t):
    raise ValueError(f"query_valid_BxT must have shape [B, T] = {(b, t)}, got "
                     f"{query_valid.shape}")
  if block_mask is not None and not validate.broadcastable(block_mask.shape, (b, t, t)):
    raise ValueError(f"block_mask_BxTxT must broadcast to [B, T, T] = {(b, t, t)} or be None "
                     f"(causal), got {block_mask.shape}")
  starts = validate.concrete_int_array(start)
  if starts is not None and starts.size and (starts.min() < 0 or starts.max() + t > s):
    raise ValueError(f"start_BxK must lie in [0, S - T] = [0, {s - t}] (the block is written "
                     f"at start .. start + T), got {starts.tolist()}")


def require_causal(block_mask_BxTxT) -> None:
  """NotImplementedError unless the block is causal (block_mask None), the one the kernels take."""
  if block_mask_BxTxT is not None:
    raise NotImplementedError("attn_stats kernels take a causal block (block_mask_BxTxT=None); a "
                              "dense block mask runs the reference (implementation='xla')")


def fold_queries(q_BxTxHxDh, kv_heads: int, t_pad: int):
  """[B, T, H, Dh] -> [B, K, G, Tp, Dh] (padded rows zero)."""
  b, t, h, dh = q_BxTxHxDh.shape
  q = tiling.pad_axis(q_BxTxHxDh, 1, t_pad)
  return q.reshape(b, t_pad, kv_heads, h // kv_heads, dh).transpose(0, 2, 3, 1, 4)


def fold_lse(lse_BxTxH, query_valid_BxT, kv_heads: int, t_pad: int):
  """[B, T, H] -> f32[B, K, G, Tp]; invalid and padded rows NO_QUERY."""
  b, t, h = lse_BxTxH.shape
  lse = jnp.where(query_valid_BxT[..., None], lse_BxTxH.astype(jnp.float32), NO_QUERY)
  lse = tiling.pad_axis(lse, 1, t_pad, value=NO_QUERY)
  return lse.reshape(b, t_pad, kv_heads, h // kv_heads).transpose(0, 2, 3, 1)


def kernel_operands(q_BxTxHxDh, k_BxKxSxDh, start_BxK, lse_BxTxH, query_valid_BxT,
                    t_pad: int):
  """(q_BxKxGxTpxDh in the keys' dtype (one operand dtype for the MXU / tensor cores),
  lse_BxKxGxTp, start_BxK int32 clipped to [0, S], last_B int32)."""
  kv, s = k_BxKxSxDh.shape[1:3]
  return (fold_queries(q_BxTxHxDh, kv, t_pad).astype(k_BxKxSxDh.dtype),
          fold_lse(lse_BxTxH, query_valid_BxT, kv, t_pad),
          jnp.clip(start_BxK.astype(jnp.int32), 0, s), last_query(query_valid_BxT))
