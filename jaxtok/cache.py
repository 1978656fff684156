"""Fixed-capacity KV cache with per-(layer, row, kv head) lengths (DESIGN.md decision 4).

Capacity S is static; how much is filled is data, so decoding never recompiles as sequences
grow. Each layer holds its own ``LayerKV``: keys (post-RoPE) and values, the filled length of
every (row, kv head) - slots ``< length[b, k]`` are valid and visible, later ones are scratch -
and the absolute position of the token in every slot. ``next_pos[b]`` is the position the next
token of row b gets; it is its own counter, never the slot count, so after a compression policy
drops slots (fewer filled slots, per layer and per head) new tokens still get their true RoPE
angle.

Writing and committing are separate, explicit steps. The forward writes a block's K/V at slots
``length .. length + T`` of every (row, head) without committing (``write_block``); ``commit``
then makes n tokens per row visible and advances ``next_pos``. A speculative tree is verified by
writing it uncommitted, then ``keep`` / ``write_block`` + ``commit`` of the accepted path;
nothing to undo for the rest. Every operation is a pure function of arrays with fixed shapes,
and the cache's tree structure never changes, so it can be a ``scan`` / ``while_loop`` carry.

Layout: one array per layer (slicing layer i out of a stacked [L, ...] array materialises a
copy of that layer's cache on TPU every step), each kv-head-major ``[B, K, S, Dh]``
(kv_and_tree.md §E): one kv head's slots are a contiguous [S, Dh] matrix, so the attention
kernels tile it as (block_s, Dh) blocks straight from HBM.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

if TYPE_CHECKING:  # jaxtok.nn imports this module
  from jaxtok.nn.config import ModelConfig

EMPTY_POS = -1  # position of a slot that holds no token


@struct.dataclass
class LayerKV:
  k: Float[Array, "B K S Dh"]
  v: Float[Array, "B K S Dh"]
  length: Int[Array, "B K"]  # filled (visible) slots per row and kv head
  pos: Int[Array, "B K S"]  # absolute position of each slot's token, EMPTY_POS if none

  @property
  def capacity(self) -> int:
    return self.k.shape[2]


@struct.dataclass
class SelectedLayerKV(LayerKV):
  """A layer whose committed slots are attended only where ``selected`` (SentenceKV's decoding,
  arXiv 2504.00970 §3.3: the full cache stays, each (row, kv head) reads its chosen slots).
  Made by ``select``; the model's attention takes it through
  ``jaxtok_kernels.selected_attention``. Every other cache operation treats it as a LayerKV
  (``keep`` does not move ``selected``: select after compacting, not before)."""
  selected: Bool[Array, "B K S"]


@struct.dataclass
class KVCache:
  layers: tuple[LayerKV, ...]
  next_pos: Int[Array, "B"]  # position of the next token of each row

  @property
  def capacity(self) -> int:
    return self.layers[0].capacity

  @property
  def batch(self) -> int:
    return self.next_pos.shape[0]


def init_cache(cfg: ModelConfig, batch: int, capacity: int | None = None,
               dtype=None) -> KVCache:
  capacity = cfg.max_len if capacity is None else capacity
  if capacity <= 0 or batch <= 0:
    raise ValueError(f"capacity and batch must be positive, got capacity={capacity}, "
                     f"batch={batch}")
  dtype = jnp.dtype(cfg.dtype) if dtype is None else dtype
  b, k, s = batch, cfg.kv_heads, capacity

  def layer():
    return LayerKV(k=jnp.zeros((b, k, s, cfg.dh), dtype), v=jnp.zeros((b, k, s, cfg.dh), dtype),
                   length=jnp.zeros((b, k), jnp.int32),
                   pos=jnp.full((b, k, s), EMPTY_POS, jnp.int32))
  return KVCache(layers=tuple(layer() for _ in range(cfg.n_layers)),
                 next_pos=jnp.zeros((b,), jnp.int32))


def _update_slots(c_BxKxSx, new_BxKxTx, start_BxK):
  """c[b, k, start[b, k] + t] = new[b, k, t] (clamped to the capacity like any dynamic slice)."""
  def one(c_Sx, n_Tx, s):
    return jax.lax.dynamic_update_slice_in_dim(c_Sx, n_Tx.astype(c_Sx.dtype), s, axis=0)
  return jax.vmap(jax.vmap(one))(c_BxKxSx, new_BxKxTx, start_BxK)


def write_kv(cache_BxKxSxDh: Float[Array, "B K S Dh"], new_BxTxKxDh: Float[Array, "B T K Dh"],
             start_BxK: Int[Array, "B K"]) -> Float[Array, "B K S Dh"]:
  """Writes a block's keys (or values) at slot ``start[b, k]`` of each (row, kv head).

  Only the T-token block is transposed to kv-head-major; the cache is updated in place (when
  donated), never relaid out.
  """
  return _update_slots(cache_BxKxSxDh, jnp.swapaxes(new_BxTxKxDh, 1, 2), start_BxK)


def write_block(layer: LayerKV, k_new_BxTxKxDh: Float[Array, "B T K Dh"],
                v_new_BxTxKxDh: Float[Array, "B T K Dh"], pos_BxT: Int[Array, "B T"],
                start_BxK: Int[Array, "B K"] | None = None) -> LayerKV:
  """The layer with the block written at slots ``start .. start + T`` (default: ``length``),
  uncommitted: ``length`` is unchanged, so the slots stay invisible until ``commit``."""
  start_BxK = layer.length if start_BxK is None else start_BxK
  b, k = start_BxK.shape
  pos_BxKxT = jnp.broadcast_to(pos_BxT.astype(jnp.int32)[:, None, :], (b, k, pos_BxT.shape[1]))
  return layer.replace(k=write_kv(layer.k, k_new_BxTxKxDh, start_BxK),
                       v=write_kv(layer.v, v_new_BxTxKxDh, start_BxK),
                       pos=_update_slots(layer.pos, pos_BxKxT, start_BxK))


def commit(cache: KVCache, n_B: Int[Array, "B"]) -> KVCache:
  """Makes the next ``n[b]`` written slots of every layer and head visible and advances
  ``next_pos`` by ``n[b]`` (the tokens were written at ``length`` by the forward)."""
  n_B = jnp.asarray(n_B, jnp.int32)
  return cache.replace(
      layers=tuple(l.replace(length=jnp.minimum(l.length + n_B[:, None], l.capacity))
                   for l in cache.layers),
      next_pos=cache.next_pos + n_B)


def rollback(cache: KVCache, n_B: Int[Array, "B"]) -> KVCache:
  """Undoes the last ``n[b]`` committed tokens of each row (slots and position counter)."""
  n_B = jnp.asarray(n_B, jnp.int32)
  return cache.replace(
      layers=tuple(l.replace(length=jnp.maximum(l.length - n_B[:, None], 0))
                   for l in cache.layers),
      next_pos=cache.next_pos - n_B)


def keep_layer(layer: LayerKV, keep_BxKxM: Int[Array, "B K M"], n_keep_BxK: Int[Array, "B K"],
               capacity: int | None = None) -> LayerKV:
  """One layer gather-compacted: slots ``keep[b, k, :n_keep[b, k]]`` (in that order) move to
  slots ``0 .. n_keep``, which become the visible ones (``length = min(n_keep, M)``).

  ``capacity`` None: the layer keeps its S slots (slots past M keep their old, invisible
  contents). ``capacity`` (static, <= S): the result has exactly that many slots, gathered
  straight from the kept ones - never a full-size copy (at 8192 x 8 a SmolLM2 fp32 cache is
  3 GB) - and kept entries past ``capacity`` are dropped, so give at least the largest n_keep.
  """
  b, k, m = keep_BxKxM.shape
  if (b, k) != layer.length.shape or m > layer.capacity:
    raise ValueError(f"keep: indices must have shape [B, K, M<=S] with (B, K) = "
                     f"{layer.length.shape}, S = {layer.capacity}; got {keep_BxKxM.shape}")
  if capacity is not None:
    if not 0 < capacity <= layer.capacity:
      raise ValueError(f"capacity: expected in (0, {layer.capacity}], got {capacity}")
    keep_BxKxM = jnp.pad(keep_BxKxM[:, :, :capacity], [(0, 0), (0, 0), (0, max(capacity - m, 0))])
    m = capacity
  idx_BxKxM = jnp.clip(keep_BxKxM.astype(jnp.int32), 0, layer.capacity - 1)
  n_BxK = jnp.minimum(n_keep_BxK.astype(jnp.int32), m)
  live_BxKxM = jnp.arange(m)[None, None, :] < n_BxK[..., None]

  def gather(x_BxKxSx, fill):
    tail = [1] * (x_BxKxSx.ndim - 3)
    g = jnp.take_along_axis(x_BxKxSx, idx_BxKxM.reshape(b, k, m, *tail), axis=2)
    g = jnp.where(live_BxKxM.reshape(b, k, m, *tail), g, fill).astype(x_BxKxSx.dtype)
    if capacity is not None:
      return g
    return jax.lax.dynamic_update_slice_in_dim(x_BxKxSx, g, 0, axis=2)
  return layer.replace(k=gather(layer.k, 0), v=gather(layer.v, 0),
                       pos=gather(layer.pos, EMPTY_POS), length=n_BxK)


def keep(cache: KVCache, keep_per_layer: tuple[Int[Array, "B K M"], ...],
         n_keep_per_layer: tuple[Int[Array, "B K"], ...], *,
         capacity: int | None = None) -> KVCache:
  """Gather-compacts every (layer, row, kv head) (``keep_layer``; the one gather-compaction in
  jaxtok: KV compression's plans and speculation's accepted paths both use it). ``next_pos`` is
  unchanged: the kept tokens keep their positions (stored in ``pos``) and new tokens continue
  after them. M (the static budget) may differ per layer; entries past ``n_keep`` are ignored;
  ``capacity`` (static): every layer gets that many slots.
  """
  if len(keep_per_layer) != len(cache.layers) or len(n_keep_per_layer) != len(cache.layers):
    raise ValueError(f"keep: expected one keep/n_keep array per layer ({len(cache.layers)}), "
                     f"got {len(keep_per_layer)} and {len(n_keep_per_layer)}")
  return cache.replace(layers=tuple(
      keep_layer(layer, keep_BxKxM, n_BxK, capacity)
      for layer, keep_BxKxM, n_BxK in zip(cache.layers, keep_per_layer, n_keep_per_layer)))


def resize(cache: KVCache, capacity: int) -> KVCache:
  """The cache with ``capacity`` slots per (layer, row, kv head): a compressed cache shrinks
  (its valid slots must fit: ``length`` is clipped to ``capacity``, slots past it are lost), and
  any cache can grow for more decoding (new slots empty). Really frees memory; ``next_pos`` is
  unchanged."""
  if capacity <= 0:
    raise ValueError(f"capacity: expected > 0, got {capacity}")
  layers = []
  for layer in cache.layers:
    layers.append(LayerKV(k=resize_slots(layer.k, capacity), v=resize_slots(layer.v, capacity),
                          length=jnp.minimum(layer.length, capacity),
                          pos=resize_slots(layer.pos, capacity, EMPTY_POS)))
  return cache.replace(layers=tuple(layers))


def resize_slots(x_BxKxSx, capacity: int, fill=0):
  """A per-slot array [B, K, S, ...] (keys, positions, a policy's per-slot statistics) cut or
  padded with ``fill`` to ``capacity`` slots."""
  s = x_BxKxSx.shape[2]
  if capacity <= s:
    return x_BxKxSx[:, :, :capacity]
  pad = [(0, 0), (0, 0), (0, capacity - s)] + [(0, 0)] * (x_BxKxSx.ndim - 3)
  return jnp.pad(x_BxKxSx, pad, constant_values=fill)


def select(cache: KVCache, selected_per_layer: tuple[Bool[Array, "B K S"], ...]) -> KVCache:
  """The cache with layer i attending only its committed slots where
  ``selected_per_layer[i]`` [B, K, S], plus every slot written from now on (a generated token
  is always attended); a plain ``decode`` loop then decodes over the selection."""
  if len(selected_per_layer) != len(cache.layers):
    raise ValueError(f"select: expected one selection per layer ({len(cache.layers)}), got "
                     f"{len(selected_per_layer)}")
  layers = []
  for layer, sel_BxKxS in zip(cache.layers, selected_per_layer):
    if sel_BxKxS.shape != layer.pos.shape:
      raise ValueError(f"select: selections must have the cache's [B, K, S] shape "
                       f"{layer.pos.shape}, got {sel_BxKxS.shape}")
    future_BxKxS = jnp.arange(layer.capacity)[None, None, :] >= layer.length[..., None]
    layers.append(SelectedLayerKV(k=layer.k, v=layer.v, length=layer.length, pos=layer.pos,
                                  selected=sel_BxKxS.astype(bool) | future_BxKxS))
  return cache.replace(layers=tuple(layers))
