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
  (H2O, TOVA, SnapKV and EMS scores).

Statistics cost (``return_lse``): where the attention runs as XLA (CPU, or "xla") it computes
the probabilities anyway, so it sums them on the way (``jaxtok_kernels.attn_stats.fused``) and
returns the sums with lse in a ``SoftmaxResidual``: no second pass over q.k. Those sums count
every query; ``slot_stats`` uses them when every query is valid (prefill, decoding) and
otherwise - or after a Pallas attention kernel, which never holds the probabilities - rebuilds
them exactly from lse in one pass over key blocks (``jaxtok_kernels.attn_stats``: Pallas on
TPU/GPU).
"""
from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

# Imported with this module, not lazily while tracing: importing Pallas registers JAX config
# options, and doing that mid-trace invalidates every jit cache entry made before it.
import jaxtok_kernels
from jaxtok_kernels import dispatch
from jaxtok_kernels.tiling import pad_axis
from jaxtok_kernels.attn_stats import attn_stats, fused
from jaxtok_kernels.attn_stats.reference import last_row
from jaxtok_kernels.selected_attention import selected_attention
from jaxtok_kernels.tree_attention import tree_attention_reference

from jaxtok.cache import LayerKV, SelectedLayerKV
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


@struct.dataclass
class SoftmaxResidual:
  """What attention returns with ``return_lse``: the softmax residual lse f32[B, T, H] and,
  where the attention summed its probabilities on the way (XLA path), those sums over all T
  queries and G query heads: per cache slot [B, K, S] and/or per block token [B, K, T]
  (the block's slots, wherever it is written). ``implementation``: the kernel choice of the
  attention, reused by the statistics' second pass."""
  lse_BxTxH: Float[Array, "B T H"]
  slot_sum_BxKxS: Float[Array, "B K S"] | None = None
  block_sum_BxKxT: Float[Array, "B K T"] | None = None
  implementation: str | None = struct.field(pytree_node=False, default=None)


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
  """Queries attend to the keys of their own block under ``mask``; with ``return_lse`` also a
  ``SoftmaxResidual`` (lse f32[B, T, H] and the block's probability sums)."""
  b, t = q_BxTxHxDh.shape[:2]
  if is_long_causal(mask, t):
    return _chunked_causal(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, return_lse)
  if return_lse:
    out, lse, (block_sum,) = fused.attend(q_BxTxHxDh, [(
        jnp.swapaxes(k_BxTxKxDh, 1, 2), jnp.swapaxes(v_BxTxKxDh, 1, 2),
        masks.as_array(mask, b, t).astype(bool)[:, None])])
    return out, SoftmaxResidual(lse, block_sum_BxKxT=block_sum)
  k_empty, v_empty, len0_BxK = _no_cache(k_BxTxKxDh)
  return tree_attention_reference(q_BxTxHxDh, k_empty, v_empty, len0_BxK, k_BxTxKxDh,
                                  v_BxTxKxDh, masks.as_array(mask, b, t),
                                  return_residuals=return_lse)


def _concat_chunks(results, return_lse):
  if not return_lse:
    return jnp.concatenate(results, axis=1)
  return (jnp.concatenate([o for o, _ in results], axis=1),
          jnp.concatenate([l for _, l in results], axis=1))


def _tril(c: int):
  return jnp.tril(jnp.ones((c, c), bool))[None, None]


def _chunked_causal(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, return_lse):
  b, t, _, _ = q_BxTxHxDh.shape
  kh = k_BxTxKxDh.shape[2]
  k_BxKxTxDh, v_BxKxTxDh = jnp.swapaxes(k_BxTxKxDh, 1, 2), jnp.swapaxes(v_BxTxKxDh, 1, 2)
  results, sums = [], []
  for start in range(0, t, CHUNK_T):
    end = min(start + CHUNK_T, t)
    q_chunk = _after(results, q_BxTxHxDh[:, start:end])
    if return_lse:
      # Earlier keys fully visible, the chunk's own causally; the probabilities are summed on
      # the way (the block's slots 0 .. end).
      segments = [(k_BxKxTxDh[:, :, start:end], v_BxKxTxDh[:, :, start:end], _tril(end - start))]
      if start:
        segments.insert(0, (k_BxKxTxDh[:, :, :start], v_BxKxTxDh[:, :, :start], True))
      out, lse, seg_sums = fused.attend(q_chunk, segments)
      results.append((out, lse))
      sums.append(pad_axis(jnp.concatenate(seg_sums, axis=-1), 2, t))
      continue
    # Keys before the chunk act as a fully visible cache of exactly `start` slots (static
    # slices: the work is the causal triangle, not the square).
    results.append(tree_attention_reference(
        q_chunk, k_BxKxTxDh[:, :, :start], v_BxKxTxDh[:, :, :start],
        jnp.full((b, kh), start, jnp.int32), k_BxTxKxDh[:, start:end],
        v_BxTxKxDh[:, start:end], masks.causal(end - start, b), return_residuals=return_lse))
  if not return_lse:
    return _concat_chunks(results, return_lse)
  out, lse = _concat_chunks(results, return_lse)
  return out, SoftmaxResidual(lse, block_sum_BxKxT=sum(sums))


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
  causal and long: its chunks then read the earlier chunks back from the cache. With
  ``return_lse`` the second result is a ``SoftmaxResidual``.
  """
  b, t = q_BxTxHxDh.shape[:2]
  impl = _kernel_impl(implementation)
  if return_lse and (impl == "xla" or (impl is None and dispatch.backend() not in ("tpu", "gpu"))):
    return _cached_fused(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_len_BxK,
                         k_new_BxTxKxDh, v_new_BxTxKxDh, mask)
  res = _cached_kernel(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_len_BxK,
                       k_new_BxTxKxDh, v_new_BxTxKxDh, mask, return_lse, impl)
  if not return_lse:
    return res
  return res[0], SoftmaxResidual(res[1], implementation=impl)


@functools.singledispatch
def attend_layer(layer: LayerKV, q_BxTxHxDh: Float[Array, "B T H Dh"],
                 k_new_BxTxKxDh: Float[Array, "B T K Dh"], v_new_BxTxKxDh: Float[Array, "B T K Dh"],
                 mask: masks.Mask, *, return_lse: bool = False,
                 implementation: Implementation = "auto"):
  """The block attends to ``layer`` (a cache layer with the block already written at
  ``length``): the attention is chosen by the layer's type, so a new way of reading the cache
  is a new cache type registered here, not a flag. A ``LayerKV`` is read by
  ``cached_attention``."""
  return cached_attention(q_BxTxHxDh, layer.k, layer.v, layer.length, k_new_BxTxKxDh,
                          v_new_BxTxKxDh, mask, return_lse=return_lse,
                          implementation=implementation)


@attend_layer.register(SelectedLayerKV)
def _(layer: SelectedLayerKV, q_BxTxHxDh, k_new_BxTxKxDh, v_new_BxTxKxDh, mask, *,
      return_lse=False, implementation="auto"):
  """Only the selected committed slots, plus the block (``jaxtok_kernels.selected_attention``:
  Pallas on TPU/GPU, the reference elsewhere)."""
  b, t = q_BxTxHxDh.shape[:2]
  if return_lse or is_long_causal(mask, t):
    raise NotImplementedError("SelectedLayerKV: selected attention takes neither statistics "
                              "nor a long causal block (it serves decoding)")
  committed_BxKxS = jnp.arange(layer.capacity)[None, None, :] < layer.length[..., None]
  return selected_attention(q_BxTxHxDh, layer.k, layer.v, layer.selected & committed_BxKxS,
                            k_new_BxTxKxDh, v_new_BxTxKxDh, masks.as_array(mask, b, t),
                            implementation=_kernel_impl(implementation))


def _cached_fused(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_len_BxK, k_new_BxTxKxDh,
                  v_new_BxTxKxDh, mask):
  """The XLA path with statistics: attention and its probability sums in one pass."""
  b, t = q_BxTxHxDh.shape[:2]
  s = k_cache_BxKxSxDh.shape[2]
  slot_S = jnp.arange(s)
  if not is_long_causal(mask, t):
    # Cache part and block part side by side, as the reference attends them.
    dt = k_cache_BxKxSxDh.dtype
    out, lse, (slot_sum, block_sum) = fused.attend(q_BxTxHxDh, [
        (k_cache_BxKxSxDh, v_cache_BxKxSxDh, (slot_S[None, None, :] < cache_len_BxK[..., None])[:, :, None]),
        (jnp.swapaxes(k_new_BxTxKxDh.astype(dt), 1, 2),
         jnp.swapaxes(v_new_BxTxKxDh.astype(dt), 1, 2),
         masks.as_array(mask, b, t).astype(bool)[:, None])])
    return out, SoftmaxResidual(lse, slot_sum_BxKxS=slot_sum, block_sum_BxKxT=block_sum)

  # Long causal block, written at cache_len: chunk queries read the written cache directly
  # (slot s visible to block query t iff s <= cache_len + t), summing into slot space.
  def attend(q_CxH, first_BxK):
    c = q_CxH.shape[1]
    limit_BxKxC = first_BxK[..., None] + jnp.arange(c)[None, None, :]
    vis = slot_S[None, None, None, :] <= limit_BxKxC[..., None]
    out, lse, (slot_sum,) = fused.attend(q_CxH, [(k_cache_BxKxSxDh, v_cache_BxKxSxDh, vis)])
    return out, lse, slot_sum

  n_full = t // CHUNK_T

  def chunk(total_BxKxS, i):
    q_CxH = jax.lax.dynamic_slice_in_dim(q_BxTxHxDh, i * CHUNK_T, CHUNK_T, axis=1)
    out, lse, slot_sum = attend(q_CxH, cache_len_BxK + i * CHUNK_T)
    return total_BxKxS + slot_sum, (out, lse)
  total, stacked = jax.lax.scan(chunk, jnp.zeros(k_cache_BxKxSxDh.shape[:3], jnp.float32),
                                jnp.arange(n_full))
  results = [jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1).reshape(b, n_full * CHUNK_T,
                                                                   *x.shape[3:]), stacked)]
  if t % CHUNK_T:
    s0 = n_full * CHUNK_T
    out, lse, slot_sum = attend(q_BxTxHxDh[:, s0:], cache_len_BxK + s0)
    results.append((out, lse))
    total = total + slot_sum
  out, lse = _concat_chunks(results, True)
  return out, SoftmaxResidual(lse, slot_sum_BxKxS=total)


def _cached_kernel(q_BxTxHxDh, k_cache_BxKxSxDh, v_cache_BxKxSxDh, cache_len_BxK, k_new_BxTxKxDh,
                   v_new_BxTxKxDh, mask, return_lse, impl):
  b, t = q_BxTxHxDh.shape[:2]

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
               start_BxK: Int[Array, "B K"], mask: Bool[Array, "B T T"] | masks.Causal,
               query_valid_BxT: Bool[Array, "B T"],
               lse_BxTxH: Float[Array, "B T H"] | SoftmaxResidual) -> AttnStats:
  """Attention statistics over the slots of ``k`` (the cache with the block written at
  ``start .. start + T``): slot s is visible to query t iff s < start (committed) or it holds
  block token j = s - start with mask[t, j]; p is the exact softmax of the attention that
  produced the residual.

  ``lse_BxTxH``: lse, or the ``SoftmaxResidual`` attention returned. Its probability sums (XLA
  path) are used when every query is valid; otherwise, and after a kernel, the sums are rebuilt
  from lse in one pass over key blocks (``jaxtok_kernels.attn_stats``; linear memory). The last
  valid query's row is one query's worth of work either way.
  """
  res = lse_BxTxH if isinstance(lse_BxTxH, SoftmaxResidual) else SoftmaxResidual(lse_BxTxH)
  block_mask = None if isinstance(mask, masks.Causal) else mask
  args = (q_BxTxHxDh, k_BxKxSxDh, start_BxK, res.lse_BxTxH, query_valid_BxT)

  def second_pass():
    return attn_stats(*args, block_mask, implementation=res.implementation)

  if res.slot_sum_BxKxS is None and res.block_sum_BxKxT is None:
    total, last = second_pass()
    return AttnStats(sum_BxKxS=total, last_BxKxS=last)
  s = k_BxKxSxDh.shape[2]
  summed = (jnp.zeros(k_BxKxSxDh.shape[:3], jnp.float32) if res.slot_sum_BxKxS is None
            else res.slot_sum_BxKxS)
  if res.block_sum_BxKxT is not None:
    summed = summed + _at_slots(res.block_sum_BxKxT, start_BxK, s)
  total = jax.lax.cond(jnp.all(query_valid_BxT), lambda: summed, lambda: second_pass()[0])
  return AttnStats(sum_BxKxS=total, last_BxKxS=last_row(*args, block_mask))


def _at_slots(block_BxKxT, start_BxK, s: int):
  """Per-block-token values placed at the slots the block was written to (0 elsewhere)."""
  t = block_BxKxT.shape[2]
  rel_BxKxS = jnp.arange(s)[None, None, :] - start_BxK[..., None]
  vals = jnp.take_along_axis(block_BxKxT, jnp.clip(rel_BxKxS, 0, t - 1), axis=2)
  return jnp.where((rel_BxKxS >= 0) & (rel_BxKxS < t), vals, 0.0)
