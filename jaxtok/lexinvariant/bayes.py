"""The exact Bayes reference for lexinvariant LMs (Huang et al., arXiv 2305.16349, Sec. 4):
the best lexinvariant predictor of a first-order Markov source, enumerating all V! relabellings
(V <= 7), its deciphering posterior, and the substitution cipher of the deciphering task.
"""
from __future__ import annotations

import itertools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxtok.config import require


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
