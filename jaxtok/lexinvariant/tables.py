"""Per-sequence random embedding tables of lexinvariant LMs (Huang et al., arXiv 2305.16349).

Every *sequence* draws a fresh Gaussian table G in R^{V x D}; token v is embedded as G[v] and the
logits are tied to the same table, logits_t = h_t . G^T (paper Sec. 3). Row v of a sequence's
table is ``normal(fold_in(seq_key, v))``: the dense path builds all V rows; the memory-lean path
(large V) generates only the rows it needs and scores the tied softmax in vocabulary chunks with
a streaming log-sum-exp -- the same numbers. Semi-lexinvariant (Sec. 6): a token type uses its
random row with probability p, else the learned row.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxtok.config import require


def sample_row(seq_key: jax.Array, token, d: int, *, scale: float = 1.0,
               learned_D: Float[Array, "D"] | None = None, p: float = 1.0) -> Float[Array, "D"]:
  """Row ``token`` of a sequence's table: N(0, scale^2 I_D) from ``fold_in(seq_key, token)``;
  with ``learned_D`` the random row is used with probability ``p`` (semi-lexinvariant)."""
  k_row, k_coin = jax.random.split(jax.random.fold_in(seq_key, token))
  row_D = scale * jax.random.normal(k_row, (d,), jnp.float32)
  if learned_D is None:
    return row_D
  return jnp.where(jax.random.bernoulli(k_coin, p), row_D, learned_D.astype(jnp.float32))


def sample_table(key: jax.Array, vocab_size: int, d: int, *, scale: float = 1.0,
                 learned_VxD: Float[Array, "V D"] | None = None,
                 p: float = 1.0) -> Float[Array, "V D"]:
  """One sequence's table (all V rows of ``sample_row``)."""
  require(vocab_size > 0 and d > 0, "vocab_size/d", "positive integers", (vocab_size, d))
  ids_V = jnp.arange(vocab_size)
  if learned_VxD is None:
    return jax.vmap(lambda v: sample_row(key, v, d, scale=scale))(ids_V)
  return jax.vmap(lambda v, l: sample_row(key, v, d, scale=scale, learned_D=l, p=p))(
      ids_V, learned_VxD)


def sequence_keys(key: jax.Array, index_B: Int[Array, "B"]) -> jax.Array:
  """Per-sequence keys from the step key and each example's source index (order-free)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index_B.reshape(-1))


def sequence_tables(seq_keys_B: jax.Array, vocab_size: int, d: int, *, scale: float = 1.0,
                    learned_VxD=None, p: float = 1.0) -> Float[Array, "B V D"]:
  return jax.vmap(lambda k: sample_table(k, vocab_size, d, scale=scale, learned_VxD=learned_VxD,
                                         p=p))(seq_keys_B)


def embed(table_BxVxD: Float[Array, "B V D"], tokens_BxT: Int[Array, "B T"]) -> Float[Array, "B T D"]:
  return jnp.take_along_axis(table_BxVxD, tokens_BxT[..., None], axis=1)


def tied_logits(h_BxTxD: Float[Array, "B T D"], table_BxVxD: Float[Array, "B V D"]) -> Float[Array, "B T V"]:
  """Logits tied to the sequence's own table (a learned unembedding would break invariance)."""
  return jnp.einsum("btd,bvd->btv", h_BxTxD, table_BxVxD.astype(h_BxTxD.dtype),
                    preferred_element_type=jnp.float32)


# --------------------------------------------------------------------------- memory-lean path
def _rows(seq_keys_B, ids_BxN, d, scale, learned_VxD, p) -> Float[Array, "B N D"]:
  if learned_VxD is None:
    one = lambda k, v: sample_row(k, v, d, scale=scale)
    return jax.vmap(lambda k, ids: jax.vmap(lambda v: one(k, v))(ids))(seq_keys_B, ids_BxN)
  vmax = learned_VxD.shape[0] - 1
  one = lambda k, v: sample_row(k, v, d, scale=scale, p=p,
                                learned_D=learned_VxD[jnp.minimum(v, vmax)])
  return jax.vmap(lambda k, ids: jax.vmap(lambda v: one(k, v))(ids))(seq_keys_B, ids_BxN)


def lean_embed(seq_keys_B, tokens_BxT, d: int, *, scale: float = 1.0, learned_VxD=None,
               p: float = 1.0) -> Float[Array, "B T D"]:
  """The embeddings without the [B, V, D] table: one generated row per token."""
  return _rows(seq_keys_B, tokens_BxT, d, scale, learned_VxD, p)


def chunked_tied_cross_entropy(h_BxTxD, seq_keys_B, targets_BxT, vocab_size: int, *,
                               chunk: int, scale: float = 1.0, learned_VxD=None,
                               p: float = 1.0) -> Float[Array, "B T"]:
  """-log softmax(h . G^T)[target] with G's rows generated ``chunk`` at a time; a streaming
  log-sum-exp (running max and rescaled sum) keeps memory at [B, T, chunk]. Each chunk is
  rematerialised in the backward pass, so no [B, T, V] residual is saved either."""
  require(chunk > 0, "chunk", "a positive vocabulary chunk size", chunk)
  b, t, d = h_BxTxD.shape
  h_BxTxD = h_BxTxD.astype(jnp.float32)
  n_chunks = -(-vocab_size // chunk)

  @jax.checkpoint
  def body(carry, c):
    m_BxT, s_BxT = carry
    ids_C = c * chunk + jnp.arange(chunk)
    rows_BxCxD = _rows(seq_keys_B, jnp.broadcast_to(ids_C, (b, chunk)), d, scale, learned_VxD, p)
    logits_BxTxC = jnp.einsum("btd,bcd->btc", h_BxTxD, rows_BxCxD)
    # Ids past the vocabulary (last, ragged chunk) get no mass.
    logits_BxTxC = jnp.where(ids_C < vocab_size, logits_BxTxC, -jnp.inf)
    m_new = jnp.maximum(m_BxT, logits_BxTxC.max(-1))
    s_new = s_BxT * jnp.exp(m_BxT - m_new) + jnp.exp(logits_BxTxC - m_new[..., None]).sum(-1)
    return (m_new, s_new), None

  init = (jnp.full((b, t), -jnp.inf, jnp.float32), jnp.zeros((b, t), jnp.float32))
  (m_BxT, s_BxT), _ = jax.lax.scan(body, init, jnp.arange(n_chunks))
  target_rows_BxTxD = _rows(seq_keys_B, targets_BxT, d, scale, learned_VxD, p)
  return m_BxT + jnp.log(s_BxT) - jnp.einsum("btd,btd->bt", h_BxTxD, target_rows_BxTxD)
