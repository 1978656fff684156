"""Fixed-capacity KV cache (DESIGN.md decision 4).

Capacity S is static; how much is filled is data (``length`` per sequence), so decoding never
recompiles as the sequence grows. Invariant: slots ``< length[b]`` are valid and visible; slots
at or beyond it are scratch. Keys are stored post-RoPE, with their absolute positions in ``pos``.
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
  k: Float[Array, "L B S K Dh"]
  v: Float[Array, "L B S K Dh"]
  pos: Int[Array, "B S"]  # absolute position of each slot's token, -1 = empty
  length: Int[Array, "B"]

  @property
  def capacity(self) -> int:
    return self.k.shape[2]


def init_cache(cfg: ModelConfig, batch: int, capacity: int | None = None,
               dtype=None) -> KVCache:
  capacity = cfg.max_len if capacity is None else capacity
  if capacity <= 0 or batch <= 0:
    raise ValueError(f"capacity and batch must be positive, got capacity={capacity}, "
                     f"batch={batch}")
  dtype = jnp.dtype(cfg.dtype) if dtype is None else dtype
  shape = (cfg.n_layers, batch, capacity, cfg.kv_heads, cfg.dh)
  return KVCache(k=jnp.zeros(shape, dtype), v=jnp.zeros(shape, dtype),
                 pos=jnp.full((batch, capacity), -1, jnp.int32),
                 length=jnp.zeros((batch,), jnp.int32))


def write_block(cache_BxSx: Array, new_BxTx: Array, start_B: Int[Array, "B"]) -> Array:
  """Writes ``new[b]`` into ``cache[b]`` at slot ``start[b]`` (per-sequence offsets)."""
  def one(c, n, s):
    return jax.lax.dynamic_update_slice_in_dim(c, n.astype(c.dtype), s, axis=0)
  return jax.vmap(one)(cache_BxSx, new_BxTx, start_B)
