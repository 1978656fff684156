"""PIE - Positional Integrity Encoding (He et al., arXiv 2407.03157, ICLR 2025).

With RoPE a cached key is k_j = R(theta p_j) W_k x_j. After an edit moves later tokens
p_j -> p_j' (insert or delete m tokens), reusing the cache leaves stale rotations; PIE applies
k_j <- R(theta p_j') R(theta p_j)^-1 k_j = R(theta (p_j' - p_j)) k_j (§3, Eq. 5) and encodes
only the edited tokens. Values and deeper layers' context effects stay approximate; layer 0's
keys are exact. StreamingLLM's in-cache position re-assignment is the same rotation.

``rerotate`` is the rotation (rotate-half layout, as jaxtok.nn.rope); ``delete`` and
``insert`` edit a cached sequence in place of re-encoding it; ``deletion_continuations``
compares the greedy continuations after a deletion (PIE, a naive splice, full recomputation).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxtok import cache as cache_lib
from jaxtok.cache import KVCache, init_cache
from jaxtok.config import require
from jaxtok.decode import Model, extend, prefill
from jaxtok.kvcompress.decoding import continue_greedy


def rerotate(k_BxKxSxDh: Float[Array, "B K S Dh"], old_pos_BxKxS: Int[Array, "B K S"],
             new_pos_BxKxS: Int[Array, "B K S"], theta: float) -> Float[Array, "B K S Dh"]:
  """Post-RoPE keys at ``old_pos`` rotated to ``new_pos`` (R(theta (new - old)) k, Eq. 5)."""
  dh = k_BxKxSxDh.shape[-1]
  require(dh % 2 == 0, "k_BxKxSxDh", "an even head dim", dh)
  inv_freq = theta ** (-jnp.arange(dh // 2, dtype=jnp.float32) * 2 / dh)
  delta = ((new_pos_BxKxS - old_pos_BxKxS).astype(jnp.float32)[..., None]
           * inv_freq[None, None, None, :])
  cos, sin = jnp.cos(delta), jnp.sin(delta)
  x1, x2 = jnp.split(k_BxKxSxDh.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(k_BxKxSxDh.dtype)


def shift(cache: KVCache, from_pos: int, delta: int, theta: float) -> KVCache:
  """Every valid slot at position >= ``from_pos`` moves by ``delta`` (keys re-rotated)."""
  layers = []
  for l in cache.layers:
    valid = jnp.arange(l.capacity)[None, None, :] < l.length[..., None]
    moved = valid & (l.pos >= from_pos)
    new_pos = jnp.where(moved, l.pos + delta, l.pos)
    layers.append(l.replace(k=rerotate(l.k, l.pos, new_pos, theta), pos=new_pos))
  return cache.replace(layers=tuple(layers), next_pos=cache.next_pos + delta)


def _select(cache: KVCache, keep_BxKxS):
  """Compacts every layer to the slots where ``keep_BxKxS`` is True (in slot order)."""
  s = cache.capacity
  idx = jnp.sort(jnp.where(keep_BxKxS, jnp.arange(s)[None, None, :], s), axis=-1)
  n = jnp.sum(keep_BxKxS, axis=-1).astype(jnp.int32)
  return cache_lib.keep(cache, (jnp.minimum(idx, s - 1),) * len(cache.layers),
                        (n,) * len(cache.layers))


def delete(cache: KVCache, start: int, n: int, theta: float) -> KVCache:
  """Removes the tokens at positions [start, start + n) and closes the gap (PIE for deletion:
  nothing is re-encoded)."""
  require(n > 0 and start >= 0, "delete", "start >= 0 and n > 0", (start, n))
  l0 = cache.layers[0]
  valid = jnp.arange(l0.capacity)[None, None, :] < l0.length[..., None]
  gone = (l0.pos >= start) & (l0.pos < start + n)
  return shift(_select(cache, valid & ~gone), start + n, -n, theta)


def splice(cache: KVCache, start: int, n: int) -> KVCache:
  """The naive baseline: drops positions [start, start + n) but leaves the later keys' rotations
  (and stored positions) stale; only the position counter moves back by n."""
  require(n > 0 and start >= 0, "splice", "start >= 0 and n > 0", (start, n))
  l0 = cache.layers[0]
  valid = jnp.arange(l0.capacity)[None, None, :] < l0.length[..., None]
  gone = (l0.pos >= start) & (l0.pos < start + n)
  out = _select(cache, valid & ~gone)
  return out.replace(next_pos=out.next_pos - n)


def insert(model: Model, cache: KVCache, start: int, tokens_BxM, theta: float) -> KVCache:
  """Inserts ``tokens`` at position ``start``: later tokens are re-rotated by +M, and only the
  M new tokens are encoded (``extend`` on a compacted view holding the tokens before
  ``start``), then written into the cache at their positions (PIE for insertion)."""
  b, m = tokens_BxM.shape
  require(m > 0 and start >= 0, "insert", "start >= 0 and at least one token", (start, m))
  l0 = cache.layers[0]
  valid = jnp.arange(l0.capacity)[None, None, :] < l0.length[..., None]
  view = _select(cache, valid & (l0.pos < start))
  pos_BxM = jnp.broadcast_to(start + jnp.arange(m, dtype=jnp.int32), (b, m))
  kv = extend(model, view, tokens_BxM, pos_BxM)[0].kv
  moved = shift(cache, start, m, theta)
  layers = tuple(cache_lib.write_block(l, k, v, pos_BxM) for l, (k, v) in zip(moved.layers, kv))
  out = cache_lib.commit(moved.replace(layers=layers), jnp.full((b,), m, jnp.int32))
  return out.replace(next_pos=moved.next_pos)


@jax.jit
def _prefill(model: Model, cache: KVCache, tokens_BxT, len_B):
  return prefill(model, cache, tokens_BxT, len_B)


def deletion_continuations(model: Model, ids_T, start: int, n: int, *, n_new: int
                           ) -> dict[str, np.ndarray]:
  """Greedy continuations (``n_new`` tokens) of ``ids`` with tokens [start, start + n) deleted:
  "full" re-encodes the edited sequence, "pie" deletes from the cache of the original
  (``delete``), "splice" drops the slots with stale rotations (``splice``)."""
  ids_T = np.asarray(ids_T, np.int32)
  t = len(ids_T)
  require(0 <= start and n > 0 and start + n < t, "start/n", f"a span inside the {t} tokens",
          (start, n))
  cache = init_cache(model.cfg, 1, t + n_new + 1)
  padded = np.zeros((1, t), np.int32)
  padded[0, :t - n] = np.concatenate([ids_T[:start], ids_T[start + n:]])
  logits, full = _prefill(model, cache, jnp.asarray(padded), jnp.array([t - n], jnp.int32))
  out = {"full": continue_greedy(model, full, logits, n=n_new)}
  logits, orig = _prefill(model, cache, jnp.asarray(ids_T[None]), jnp.array([t], jnp.int32))
  out["pie"] = continue_greedy(model, delete(orig, start, n, model.cfg.rope_theta), logits,
                               n=n_new)
  out["splice"] = continue_greedy(model, splice(orig, start, n), logits, n=n_new)
  return {k: np.asarray(v)[0] for k, v in out.items()}
