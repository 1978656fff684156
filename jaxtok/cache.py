"""Fixed-capacity KV cache (DESIGN.md decision 4).

Capacity S is static; how much is filled is data (``length`` per sequence), so decoding never
recompiles as the sequence grows. Invariant: slots ``< length[b]`` are valid and visible; slots
at or beyond it are scratch. Keys are stored post-RoPE, with their absolute positions in ``pos``.

Layout: one array per layer (slicing layer i out of a stacked [L, ...] array materialises a
copy of that layer's cache on TPU every step), each kv-head-major ``[B, K, S, Dh]``
(kv_and_tree.md §E): one kv head's slots are a contiguous [S, Dh] matrix, so the attention
kernels tile it as (block_s, Dh) blocks straight from HBM. A [.., S, K, Dh] cache would have to
be relaid out (a full copy on TPU, whose tiled layout depends on the last two dims) before every
decode step.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

if TYPE_CHECKING:  # jaxtok.nn imports this module
  from jaxtok.nn.config import ModelConfig


@struct.dataclass
class KVCache:
  k: tuple[Float[Array, "B K S Dh"], ...]  # one per layer
  v: tuple[Float[Array, "B K S Dh"], ...]
  pos: Int[Array, "B S"]  # absolute position of each slot's token, -1 = empty
  length: Int[Array, "B"]
  # Static: True only for a cache fresh from init_cache (every slot empty). Attention then runs
  # over the new block alone: nothing in the cache is visible, and the dense XLA path would
  # still score all S slots (1.8x the time of a 512-token prefill on CPU). A write clears it.
  empty: bool = struct.field(pytree_node=False, default=False)

  @property
  def capacity(self) -> int:
    return self.pos.shape[1]


def init_cache(cfg: ModelConfig, batch: int, capacity: int | None = None,
               dtype=None) -> KVCache:
  capacity = cfg.max_len if capacity is None else capacity
  if capacity <= 0 or batch <= 0:
    raise ValueError(f"capacity and batch must be positive, got capacity={capacity}, "
                     f"batch={batch}")
  dtype = jnp.dtype(cfg.dtype) if dtype is None else dtype
  shape = (batch, cfg.kv_heads, capacity, cfg.dh)
  zeros = lambda: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))  # noqa: E731
  return KVCache(k=zeros(), v=zeros(),
                 pos=jnp.full((batch, capacity), -1, jnp.int32),
                 length=jnp.zeros((batch,), jnp.int32), empty=True)


def write_block(cache_BxSx: Array, new_BxTx: Array, start_B: Int[Array, "B"]) -> Array:
  """Writes ``new[b]`` into ``cache[b]`` at slot ``start[b]`` (per-row offsets; e.g. ``pos``)."""
  def one(c, n, s):
    return jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), s, axis=0)
  return jax.vmap(one)(cache_BxSx, new_BxTx, start_B)


def write_kv(cache_BxKxSxDh: Float[Array, "B K S Dh"], new_BxTxKxDh: Float[Array, "B T K Dh"],
             start_B: Int[Array, "B"]) -> Float[Array, "B K S Dh"]:
  """Writes the new block's keys (or values) at slot ``start[b]`` of each kv head of row b.

  Only the T-token block is transposed to kv-head-major; the cache is updated in place (when
  donated), never relaid out.
  """
  new_BxKxTxDh = jnp.swapaxes(new_BxTxKxDh, 1, 2)

  def one(c_KxSxDh, n_KxTxDh, s):
    return jax.lax.dynamic_update_slice_in_dim(c_KxSxDh, n_KxTxDh.astype(c_KxSxDh.dtype), s,
                                               axis=1)
  return jax.vmap(one)(cache_BxKxSxDh, new_BxKxTxDh, start_B)
