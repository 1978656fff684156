"""Lexinvariant language models (Huang et al., "Lexinvariant Language Models", arXiv 2305.16349).

A model p is lexinvariant if p(x_1..x_n) = p(pi(x_1)..pi(x_n)) for every permutation pi of the
vocabulary (the paper's Definition). The construction (paper Sec. 3): every *sequence* draws a
fresh Gaussian table G in R^{V x D}; token v is embedded as G[v] everywhere in that sequence and
the logits are tied to the same table, logits_t = h_t . G^T. Since G and G[pi^-1] have the same
law, the expected model is invariant; for one fixed table the model is *equivariant*:
``logits(pi(x), G[pi^-1])[..., pi(v)] == logits(x, G)[..., v]``.

The tables are drawn inside the loss from the train step's key (``jaxtok.train.losses`` seam):
sequence b's key is ``fold_in(step_key, index_b)`` with ``index_b`` the example's index in its
source (carried by the batch as ``index`` i32[B, 1]), so shuffling the data within a step never
changes which table an example gets. Row v of a sequence's table is ``normal(fold_in(seq_key, v))``:
the dense path builds all V rows; the memory-lean path (large V) generates only the rows it needs
and scores the tied softmax in vocabulary chunks with a streaming log-sum-exp -- the same numbers.

Semi-lexinvariant regulariser (paper Sec. 6): each token type of a sequence uses its random row
with probability p, else the learned row (the model's ``unembed`` columns, tied in and out).

The exact Bayes reference (last section): the best lexinvariant predictor of a first-order Markov
source, enumerating all V! relabellings (V <= 7), and its deciphering posterior.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxtok.config import require
from jaxtok.data.pipeline import to_lm_example
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import default_positions, forward
from jaxtok.train.losses import LossAux, LossFn, cross_entropy, weighted_mean


# --------------------------------------------------------------------------- tables
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


# --------------------------------------------------------------------------- the model and loss
def check_config(cfg: ModelConfig) -> None:
  require(cfg.embedding == "external", "model.embedding",
          "'external' for a lexinvariant model (the tables come from the loss)", cfg.embedding)


def forward_with_table(graphdef, params, tokens_BxT, table_BxVxD, positions=None, mask=None):
  """(logits tied to ``table_BxVxD`` [B, T, V], hidden [B, T, D]) for one fixed table per
  sequence: the deterministic core the equivariance test checks."""
  b, t = tokens_BxT.shape
  positions = default_positions(b, t) if positions is None else positions
  out = forward(graphdef, params, tokens_BxT, positions, mask,
                embeddings_BxTxD=embed(table_BxVxD, tokens_BxT), return_hidden=True)
  return tied_logits(out.hidden, table_BxVxD), out.hidden


def _batch_keys(batch: dict, key: jax.Array) -> jax.Array:
  if "index" not in batch:
    raise ValueError("batch: a lexinvariant loss needs 'index' i32[B, 1] (each example's "
                     "source index); build rows with to_indexed_lm_example")
  return sequence_keys(key, batch["index"])


def _positions(batch: dict):
  b, t = batch["inputs"].shape
  return batch["positions"] if "positions" in batch else default_positions(b, t)


def sequence_logits(cfg: ModelConfig, graphdef, params, batch: dict, key: jax.Array, *,
                    scale: float = 1.0, p: float = 1.0):
  """(logits [B, T, V], hidden [B, T, D]) of the (semi-)lexinvariant LM on ``batch`` with the
  tables drawn from ``key`` and the batch's ``index`` -- exactly what its loss scores (the dense
  path); ``p < 1`` mixes in the learned rows (the ``unembed`` columns)."""
  check_config(cfg)
  seq_keys_B = _batch_keys(batch, key)
  learned_VxD = params["unembed"][...].T if p < 1.0 else None
  table_BxVxD = sequence_tables(seq_keys_B, cfg.vocab_size, cfg.d_model, scale=scale,
                                learned_VxD=learned_VxD, p=p)
  return forward_with_table(graphdef, params, batch["inputs"], table_BxVxD, _positions(batch),
                            batch.get("mask"))


def lexinvariant_loss(cfg: ModelConfig, *, scale: float = 1.0, p: float = 1.0,
                      chunk: int = 0) -> LossFn:
  """The LossFn of a lexinvariant (``p=1``) or semi-lexinvariant (``p<1``) LM.

  batch: ``inputs``, ``targets`` i32[B, T], ``weights`` f32[B, T], ``index`` i32[B, 1] (the
  example's source index, see ``to_indexed_lm_example``). ``chunk > 0``: the memory-lean path.
  The semi-lexinvariant learned rows are the model's ``unembed`` columns (cfg.tie_embeddings is
  False for external embeddings, so that matrix exists and is otherwise unused).
  """
  check_config(cfg)
  require(scale > 0, "scale", "> 0", scale)
  require(0.0 <= p <= 1.0, "p", "a probability in [0, 1]", p)
  require(chunk >= 0, "chunk", ">= 0 (0: dense tables)", chunk)
  v, d = cfg.vocab_size, cfg.d_model

  def loss_fn(graphdef, params, batch, key):
    tokens_BxT = batch["inputs"]
    if chunk:
      seq_keys_B = _batch_keys(batch, key)
      learned_VxD = params["unembed"][...].T if p < 1.0 else None
      kw = dict(scale=scale, learned_VxD=learned_VxD, p=p)
      emb_BxTxD = lean_embed(seq_keys_B, tokens_BxT, d, **kw)
      out = forward(graphdef, params, tokens_BxT, _positions(batch), batch.get("mask"),
                    embeddings_BxTxD=emb_BxTxD, return_hidden=True)
      nll_BxT = chunked_tied_cross_entropy(out.hidden, seq_keys_B, batch["targets"], v,
                                           chunk=chunk, **kw)
    else:
      logits_BxTxV, _ = sequence_logits(cfg, graphdef, params, batch, key, scale=scale, p=p)
      nll_BxT = cross_entropy(logits_BxTxV, batch["targets"])
    w_BxT = batch["weights"].astype(jnp.float32)
    return weighted_mean(nll_BxT, w_BxT), LossAux(nll_BxT=nll_BxT, weights_BxT=w_BxT)

  return loss_fn


# --------------------------------------------------------------------------- data helpers
class Indexed:
  """A source whose examples also carry their own index (the per-sequence table's seed)."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {**self.source[index], "index": np.asarray([index], np.int32)}


def to_indexed_lm_example(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``to_lm_example`` plus the example's ``index`` [1] (from ``Indexed``)."""
  if "index" not in example:
    raise ValueError("example: missing 'index'; wrap the source in jaxtok.lexinvariant.Indexed")
  return {**to_lm_example(example), "index": np.asarray(example["index"], np.int32).reshape(1)}


def substitution_cipher(key: jax.Array, tokens_BxT: Int[Array, "B T"],
                        vocab_size: int) -> tuple[Int[Array, "B T"], Int[Array, "B V"]]:
  """Enciphers each sequence with its own uniform permutation: (perm[b][tokens], perm_BxV)."""
  keys = jax.random.split(key, tokens_BxT.shape[0])
  perm_BxV = jax.vmap(lambda k: jax.random.permutation(k, vocab_size))(keys)
  return jnp.take_along_axis(perm_BxV, tokens_BxT, axis=1), perm_BxV


# --------------------------------------------------------------------------- exact Bayes reference
# The exact Bayes-optimal lexinvariant predictor of a first-order Markov source (small V).
#
# The best lexinvariant model of a source p is its symmetrisation p_lex(y) = (1/V!) sum_pi p(pi(y))
# (Huang et al., arXiv 2305.16349, the lexinvariant definition): equivalently, the observed sequence
# is the source's sequence x under an unknown uniform substitution cipher y = sigma(x), and the
# predictor is the posterior mixture over sigma
#
#   p(y_{t+1} | y_{0..t}) = sum_sigma w_t(sigma) M[sigma^-1(y_t), sigma^-1(y_{t+1})],
#   w_t(sigma) ∝ pi0[sigma^-1(y_0)] prod_{s<t} M[sigma^-1(y_s), sigma^-1(y_{s+1})].
#
# All V! hypotheses are enumerated (V <= 7: 5040), the filter runs as a ``lax.scan`` over t and
# ``vmap`` over sequences. The same posterior gives the Bayes deciphering of the current symbol,
# P(x_t = a | y_{0..t}) -- the accuracy no probe reading the context so far can beat.
#
# Position t of every output is aligned with an LM's position t: the model has read y_0..y_t and
# predicts y_{t+1} (so position 0 is already conditioned on y_0).
BAYES_MAX_VOCAB = 7  # 7! = 5040 hypotheses


def all_permutations(vocab_size: int) -> np.ndarray:
  """i32[V!, V]; row p maps a cipher symbol to its plaintext under hypothesis p."""
  require(1 <= vocab_size <= BAYES_MAX_VOCAB, "vocab_size",
          f"in [1, {BAYES_MAX_VOCAB}] (V! hypotheses)", vocab_size)
  return np.asarray(list(itertools.permutations(range(vocab_size))), np.int32)


def _check_markov(transition_VxV, initial_V):
  t = np.asarray(transition_VxV, np.float64)
  i = np.asarray(initial_V, np.float64)
  v = t.shape[0]
  require(t.ndim == 2 and t.shape == (v, v), "transition_VxV", "a square [V, V] matrix", t.shape)
  require(np.all(t >= 0) and np.allclose(t.sum(1), 1.0, atol=1e-5), "transition_VxV",
          "rows that are probability distributions", t.sum(1))
  require(i.shape == (v,) and np.all(i >= 0) and abs(i.sum() - 1) < 1e-5, "initial_V",
          f"a probability vector of length {v}", i)
  return v


def bayes_lexinvariant_markov(transition_VxV, initial_V, tokens_BxT1: Int[Array, "B T1"]):
  """Exact lexinvariant Bayes predictor on sequences y of length T+1.

  Returns ``(nll_BxT, posterior_BxTxV)``: ``nll[b, t] = -log p_lex(y_{t+1} | y_{0..t})`` and
  ``posterior[b, t, a] = P(sigma^-1(y_t) = a | y_{0..t})`` (the plaintext of the current symbol).
  """
  v = _check_markov(transition_VxV, initial_V)
  tokens_BxT1 = jnp.asarray(tokens_BxT1, jnp.int32)
  require(tokens_BxT1.ndim == 2 and tokens_BxT1.shape[1] >= 2, "tokens_BxT1",
          "i32[B, T+1] with T >= 1", tokens_BxT1.shape)
  lo, hi = int(tokens_BxT1.min()), int(tokens_BxT1.max())
  require(lo >= 0 and hi < v, "tokens_BxT1", f"ids in [0, {v})", (lo, hi))
  inv_PxV = jnp.asarray(all_permutations(v))
  # log 0 = -inf is exact here: a hypothesis that explains a transition with probability 0 is
  # ruled out; the true cipher always keeps a finite weight.
  with np.errstate(divide="ignore"):
    log_m_VxV = jnp.asarray(np.log(np.asarray(transition_VxV, np.float64)), jnp.float32)
    log_init_V = jnp.asarray(np.log(np.asarray(initial_V, np.float64)), jnp.float32)
  m_VxV = jnp.exp(log_m_VxV)
  onehot_PxVxV = jax.nn.one_hot(inv_PxV, v, dtype=jnp.float32)  # [p, cipher c, plaintext a]

  def one(seq_T1):
    def step(log_w_P, yy):
      y_t, y_next = yy
      q_P = jax.nn.softmax(log_w_P)
      a_P = inv_PxV[:, y_t]
      post_V = q_P @ onehot_PxVxV[:, y_t, :]
      pred_V = jnp.einsum("p,pc->c", q_P, m_VxV[a_P[:, None], inv_PxV])
      nll = -jnp.log(pred_V[y_next])
      return log_w_P + log_m_VxV[a_P, inv_PxV[:, y_next]], (nll, post_V)

    log_w0_P = log_init_V[inv_PxV[:, seq_T1[0]]]
    _, (nll_T, post_TxV) = jax.lax.scan(step, log_w0_P, (seq_T1[:-1], seq_T1[1:]))
    return nll_T, post_TxV

  return jax.vmap(one)(tokens_BxT1)


def map_accuracy(posterior_BxTxV: Float[Array, "B T V"],
                 plaintext_BxT: Int[Array, "B T"]) -> Float[Array, "T"]:
  """Per-position accuracy of the symbol-wise MAP deciphering argmax_a posterior[b, t, a]."""
  hit = jnp.argmax(posterior_BxTxV, -1) == jnp.asarray(plaintext_BxT)
  return hit.astype(jnp.float32).mean(0)


def known_cipher_nll(transition_VxV, plaintext_BxT1: Int[Array, "B T1"]) -> Float[Array, "B T"]:
  """-log M[x_t, x_{t+1}]: the loss of the true (non-lexinvariant) source model."""
  log_m = jnp.log(jnp.asarray(transition_VxV, jnp.float32))
  x = jnp.asarray(plaintext_BxT1)
  return -log_m[x[:, :-1], x[:, 1:]]


def brute_force_nll(transition_VxV, initial_V, seq_T1: np.ndarray) -> np.ndarray:
  """The same predictive from marginal likelihoods, p(y_{<=t+1}) / p(y_{<=t}), in float64 numpy
  (the oracle for tests; O(V! T^2))."""
  v = _check_markov(transition_VxV, initial_V)
  m, init = np.asarray(transition_VxV, np.float64), np.asarray(initial_V, np.float64)
  perms = all_permutations(v)

  def marginal(y):
    total = 0.0
    for inv in perms:
      x = inv[np.asarray(y)]
      total += init[x[0]] * np.prod(m[x[:-1], x[1:]])
    return total / len(perms)

  return np.array([-np.log(marginal(seq_T1[:t + 2]) / marginal(seq_T1[:t + 1]))
                   for t in range(len(seq_T1) - 1)])
