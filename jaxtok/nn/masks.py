"""Attention masks, ``True`` = may attend. Dense masks are bool [B, T, S] (query, key).

Every transform in the papers is one of these: causal (standard LM), bidirectional (encoder /
the unmasked permutation inverter), prefix-LM, "same or earlier step" (NAR diagonals, scratch
tokens), and tree masks (ancestor-or-self) for speculative verification.

The causal mask is also a structured value, ``CAUSAL`` (tokamax's ``Mask(is_causal=True)``):
attention over a long causal block then runs in query chunks without ever building the [T, T]
array (linear memory, jaxtok.nn.attention). ``as_array`` gives the dense form for any mask.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Int


@struct.dataclass
class Causal:
  """Query t sees keys 0..t of its own block (a pytree without leaves: static under jit)."""


CAUSAL = Causal()

Mask = Bool[Array, "B T S"] | Causal


def as_array(mask: Mask, batch: int, t: int) -> Bool[Array, "B T S"]:
  return causal(t, batch) if isinstance(mask, Causal) else mask


def causal(t: int, batch: int = 1) -> Bool[Array, "B T T"]:
  return jnp.broadcast_to(jnp.tril(jnp.ones((t, t), bool)), (batch, t, t))


def bidirectional(t: int, batch: int = 1) -> Bool[Array, "B T T"]:
  return jnp.ones((batch, t, t), bool)


def prefix(t: int, prefix_len: Int[Array, "B"]) -> Bool[Array, "B T T"]:
  """Prefix-LM: every query sees the whole prefix, the rest is causal."""
  q = jnp.arange(t)[:, None]
  k = jnp.arange(t)[None, :]
  in_prefix_B1S = (k[None] < prefix_len[:, None, None])
  return (k <= q)[None] | in_prefix_B1S


def steps(step_BxT: Int[Array, "B T"]) -> Bool[Array, "B T T"]:
  """Query t sees key s iff step[s] <= step[t] (tokens generated together see each other)."""
  return step_BxT[:, None, :] <= step_BxT[:, :, None]


def padding(valid_BxS: Bool[Array, "B S"], t: int) -> Bool[Array, "B T S"]:
  return jnp.broadcast_to(valid_BxS[:, None, :], (valid_BxS.shape[0], t, valid_BxS.shape[1]))


def tree(parent_BxN: Int[Array, "B N"]) -> Bool[Array, "B N N"]:
  """Ancestor-or-self mask of a flattened tree with ``parent[i] < i`` and ``parent[0] = 0``.

  Follows parent pointers N times (log-depth doubling would be faster, N is small).
  """
  b, n = parent_BxN.shape
  mask = jnp.broadcast_to(jnp.eye(n, dtype=bool), (b, n, n))
  node_BxN = jnp.broadcast_to(jnp.arange(n), (b, n))

  def body(_, carry):
    mask, node = carry
    node = jnp.take_along_axis(parent_BxN, node, axis=1)
    mask = mask | jax.nn.one_hot(node, n, dtype=bool)
    return mask, node

  mask, _ = jax.lax.fori_loop(0, n, body, (mask, node_BxN))
  return mask
