"""Attention of a block of queries, with or without a KV cache, and its statistics.

There is one masked-softmax attention, ``jaxtok_kernels.tree_attention`` (its jnp reference on
CPU, Pallas on TPU/GPU): queries of a new block against the visible cache slots plus the block
itself under a block mask. Attention without a cache is the same op with an empty cache.

* ``attention``: queries against the keys of the same block (no cache), any mask.
* ``cached_attention``: the block against a layer's cache slots ``< length[b, k]`` plus itself.
* Long causal blocks (prefill, T > ``DENSE_MAX_T``) run in query chunks of ``CHUNK_T``: chunk i
  is "cached attention" whose cache is the part of the block before it, so no [T, T] score array
  exists (memory O(CHUNK_T * T)). Without a cache the earlier keys are static slices (the causal
  triangle of work); with a cache - fresh or not - the block is written first and a ``lax.scan``
  over chunks lets the kernel stream the earlier chunks from the cache itself (on TPU/GPU the
  kernel's online softmax never holds more than a block of scores).
* ``slot_stats``: per kv head and cache slot, the attention probability summed over the block's
  valid queries and the G query heads of the group, and the last valid query's probabilities
  (H2O, TOVA, SnapKV and EMS scores), rebuilt from the softmax residual ``lse``.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

# Imported with this module, not lazily while tracing: importing Pallas registers JAX config
# options, and doing that mid-trace invalidates every jit cache entry made before it.
import jaxtok_kernels
from jaxtok_kernels.tree_attention import tree_attention_reference

from jaxtok.nn import masks

# Causal blocks up to this length attend densely (fastest on CPU); longer ones in chunks.
DENSE_MAX_T = 1024
CHUNK_T = 512

Implementation = Literal["auto", "xla", "pallas"]


@struct.dataclass
class AttnStats:
  """Attention statistics of one layer for a block, per cache slot (block tokens at the slots
  they were written to). Summed over the G query heads of each kv head; padding queries
  (position < 0) excluded."""
  sum_BxKxS: Float[Array, "B K S"]  # probability mass each slot received from the block
  last_BxKxS: Float[Array, "B K S"]  # the last valid query's probabilities


def is_long_causal(mask, t: int) -> bool:
  """A causal block long enough to be attended in chunks (never building [T, T])."""
  return isinstance(mask, masks.Causal) and t > DENSE_MAX_T


def _kernel_impl(implementation: Implementation):
  return None if implementation == "auto" else implementation


def _no_cache(k_BxTxKxDh):
  b, _, kh, dh = k_BxTxKxDh.shape
  empty = jnp.zeros((b, kh, 0, dh), k_BxTxKxDh.dtype)
  return empty, empty, jnp.zeros((b, kh), jnp.int32)


def attention(q_BxTxHxDh: Float[Array, "B T H Dh"], k_BxTxKxDh: Float[Array, "B T K Dh"],
              v_BxTxKxDh: Float[Array, "B T K Dh"], mask: masks.Mask, *,
              return_lse: bool = False):
  """Queries attend to the keys of their own block under ``mask``; with ``return_lse`` also the
  softmax residual lse f32[B, T, H]."""
  b, t = q_BxTxHxDh.shape[:2]
  if is_long_causal(mask, t):
    return _chunked_causal(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, return_lse)
  k_empty, v_empty, len0_BxK = _no_cache(k_BxTxKxDh)
  return tree_attention_reference(q_BxTxHxDh, k_empty, v_empty, len0_BxK, k_BxTxKxDh,
                                  v_BxTxKxDh, masks.as_array(mask, b, t),
                                  return_residuals=return_lse)


def _concat_chunks(results, return_lse):
  if not return_lse:
    return jnp.concatenate(results, axis=1)
  return (jnp.concatenate([o for o, _ in results], axis=1),
          jnp.concatenate([l for _, l in results], axis=1))


def _chunked_causal(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, return_lse):
  b, t, _, _ = q_BxTxHxDh.shape
  kh = k_BxTxKxDh.shape[2]
  k_BxKxTxDh, v_BxKxTxDh = jnp.swapaxes(k_BxTxKxDh, 1, 2), jnp.swapaxes(v_BxTxKxDh, 1, 2)
  results = []
  for start in range(0, t, CHUNK_T):
    end = min(start + CHUNK_T, t)
    q_chunk = _after(results, q_BxTxHxDh[:, start:end])
    # Keys before the chunk act as a fully visible cache of exactly `start` slots (static
    # slices: the work is the causal triangle, not the square).
    results.append(tree_attention_reference(
        q_chunk, k_BxKxTxDh[:, :, :start], v_BxKxTxDh[:, :, :start],
        jnp.full((b, kh), start, jnp.int32), k_BxTxKxDh[:, start:end],
        v_BxTxKxDh[:, start:end], masks.causal(end - start, b), return_residuals=return_lse))
  return _concat_chunks(results, return_lse)


def _after(results, x):
  """``x``, made to depend on the previous chunk's result: chunks then run one after another and
  reuse one chunk's temporaries (independent chunks were all live at once: O(T^2) again)."""
  if not results:
    return x
  return jax.lax.optimization_barrier((results[-1], x))[1]


def cached_attention(q_BxTxHxDh: Float[Array, "B T H Dh"], k_cache_BxKxSxDh, v_cache_BxKxSxDh,
                     cache_len_BxK: Int[Array, "B K"], k_new_BxTxKxDh: Float[Array, "B T K Dh"],
                     v_new_BxTxKxDh: Float[Array, "B T K Dh"], mask: masks.Mask, *,
                     return_lse: bool = False, implementation: Implementation = "auto"):
  """The block attends to cache slots ``< cache_len[b, k]`` plus itself under ``mask``.

  The block must already be written at slots ``cache_len .. cache_len + T`` when ``mask`` is
  causal and long: its chunks then read the earlier chunks back from the cache.
  """
  b, t = q_BxTxHxDh.shape[:2]
  impl = _kernel_impl(implementation)

  def attend(q, k_new, v_new, cache_len, mask_):
    return jaxtok_kernels.tree_attention(q, k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_len, k_new,
                                         v_new, mask_, implementation=impl,
                                         return_residuals=return_lse)
  if not is_long_causal(mask, t):
    return attend(q_BxTxHxDh, k_new_BxTxKxDh, v_new_BxTxKxDh, cache_len_BxK,
                  masks.as_array(mask, b, t))
  # Long causal block: a scan over equal chunks (one compiled chunk, run in sequence), each
  # seeing the cache up to its own start, then the remainder chunk.
  n_full = t // CHUNK_T

  def chunk(_, i):
    take = lambda x: jax.lax.dynamic_slice_in_dim(x, i * CHUNK_T, CHUNK_T, axis=1)  # noqa: E731
    return None, attend(take(q_BxTxHxDh), take(k_new_BxTxKxDh), take(v_new_BxTxKxDh),
                        cache_len_BxK + i * CHUNK_T, masks.causal(CHUNK_T, b))
  _, stacked = jax.lax.scan(chunk, None, jnp.arange(n_full))
  # [n, B, C, ...] -> [B, n * C, ...]
  results = [jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(b, n_full * CHUNK_T,
                                                                   *x.shape[3:]), stacked)]
  if t % CHUNK_T:
    s0 = n_full * CHUNK_T
    results.append(attend(q_BxTxHxDh[:, s0:], k_new_BxTxKxDh[:, s0:], v_new_BxTxKxDh[:, s0:],
                          cache_len_BxK + s0, masks.causal(t - s0, b)))
  return _concat_chunks(results, return_lse)


def slot_stats(q_BxTxHxDh: Float[Array, "B T H Dh"], k_BxKxSxDh: Float[Array, "B K S Dh"],
               start_BxK: Int[Array, "B K"], mask: masks.Mask, query_valid_BxT: Bool[Array, "B T"],
               lse_BxTxH: Float[Array, "B T H"]) -> AttnStats:
  """Attention statistics over the slots of ``k`` (the cache with the block written at
  ``start .. start + T``): slot s is visible to query t iff s < start (committed) or it holds
  block token j = s - start with mask[t, j]. p = exp(q.k / sqrt(Dh) - lse), the exact softmax
  of the attention that produced lse. Queries are processed in chunks of CHUNK_T (linear memory).
  """
  b, t, h, dh = q_BxTxHxDh.shape
  kh, s = k_BxKxSxDh.shape[1], k_BxKxSxDh.shape[2]
  g = h // kh
  rel_BxKxS = jnp.arange(s)[None, None, :] - start_BxK[..., None]  # block index of each slot
  in_block_BxKxS = (rel_BxKxS >= 0) & (rel_BxKxS < t)
  last_B = jnp.maximum(jnp.sum(query_valid_BxT, axis=1) - 1, 0)
  dense = None if isinstance(mask, masks.Causal) else jnp.broadcast_to(mask, (b, t, t))
  sum_BxKxS = jnp.zeros((b, kh, s), jnp.float32)
  last_BxKxS = jnp.zeros((b, kh, s), jnp.float32)
  for c0 in range(0, t, CHUNK_T):
    c1 = min(c0 + CHUNK_T, t)
    t_C = jnp.arange(c0, c1)
    if dense is None:
      block_vis_BxKxCxS = rel_BxKxS[:, :, None, :] <= t_C[None, None, :, None]
    else:
      idx_BxKxS = jnp.clip(rel_BxKxS, 0, t - 1)
      block_vis_BxKxCxS = jax.vmap(lambda m_CxT, i_KxS: m_CxT[:, i_KxS].transpose(1, 0, 2))(
          dense[:, c0:c1], idx_BxKxS)
    vis_BxKxCxS = (rel_BxKxS < 0)[:, :, None, :] | (in_block_BxKxS[:, :, None, :]
                                                     & block_vis_BxKxCxS)
    vis_BxKxCxS &= query_valid_BxT[:, None, c0:c1, None]
    q_BxKxGxCxDh = q_BxTxHxDh[:, c0:c1].reshape(b, c1 - c0, kh, g, dh).transpose(0, 2, 3, 1, 4)
    scores = jnp.einsum("bkgcd,bksd->bkgcs", q_BxKxGxCxDh, k_BxKxSxDh.astype(q_BxTxHxDh.dtype),
                        preferred_element_type=jnp.float32) / jnp.sqrt(jnp.float32(dh))
    lse_BxKxGxC = lse_BxTxH[:, c0:c1].reshape(b, c1 - c0, kh, g).transpose(0, 2, 3, 1)
    p = jnp.where(vis_BxKxCxS[:, :, None], jnp.exp(scores - lse_BxKxGxC[..., None]), 0.0)
    p_BxKxCxS = p.sum(axis=2)
    sum_BxKxS += p_BxKxCxS.sum(axis=2)
    is_last_BxC = t_C[None, :] == last_B[:, None]
    last_BxKxS += jnp.einsum("bkcs,bc->bks", p_BxKxCxS, is_last_BxC.astype(jnp.float32))
  return AttnStats(sum_BxKxS=sum_BxKxS, last_BxKxS=last_BxKxS)

