"""The exact Bayes lexinvariant predictor of a Markov source (V! relabellings) against hand
computations and a brute-force marginal-likelihood oracle; it is itself lexinvariant."""
import numpy as np
import pytest

from jaxtok import lexinvariant as lex
from jaxtok.config import ConfigError

M3 = np.array([[0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.05, 0.15, 0.8]])
PI3 = np.array([0.5, 0.3, 0.2])


def test_v3_two_symbol_predictive_by_hand():
  # sigma uniform: sigma^-1(y_0) = a has prior pi0[a] (each a for 2 of the 6 relabellings), so
  # p(y_1 = y_0 | y_0) = sum_a pi0[a] M[a, a]; a different symbol splits the rest evenly.
  nll, post = lex.bayes_lexinvariant_markov(M3, PI3, np.array([[1, 1], [1, 2]]))
  same = sum(PI3[a] * M3[a, a] for a in range(3))
  other = sum(PI3[a] * (1 - M3[a, a]) / 2 for a in range(3))
  np.testing.assert_allclose(np.exp(-np.asarray(nll[:, 0])), [same, other], rtol=1e-5)
  # Having seen one symbol, its plaintext posterior is the prior pi0.
  np.testing.assert_allclose(post[0, 0], PI3, rtol=1e-5)


@pytest.mark.parametrize("v", [3, 4])
def test_matches_brute_force_marginal_likelihoods(v):
  rng = np.random.default_rng(v)
  m = rng.dirichlet(np.full(v, 0.5), v)
  pi0 = rng.dirichlet(np.ones(v))
  seqs = rng.integers(0, v, (3, 9))
  nll, _ = lex.bayes_lexinvariant_markov(m, pi0, seqs)
  for b in range(3):
    np.testing.assert_allclose(nll[b], lex.brute_force_nll(m, pi0, seqs[b]), rtol=2e-4,
                               atol=2e-5)


def test_predictor_is_lexinvariant_and_deciphers_a_near_deterministic_chain():
  v = 5
  m = np.full((v, v), 0.01)
  m[np.arange(v), (np.arange(v) + 1) % v] = 1 - 0.01 * (v - 1)  # a noisy cycle 0->1->2->...
  pi0 = np.full(v, 1 / v)
  x = np.array([[(2 + t) % v for t in range(12)]])
  perm = np.random.default_rng(0).permutation(v)
  nll, post = lex.bayes_lexinvariant_markov(m, pi0, x)
  nll_p, post_p = lex.bayes_lexinvariant_markov(m, pi0, perm[x])
  np.testing.assert_allclose(nll_p, nll, rtol=1e-5, atol=1e-6)
  # A cycle can be decoded only up to rotation, so the plaintext posterior stays uniform...
  np.testing.assert_allclose(post_p[0, -1], np.full(v, 1 / v), atol=1e-3)
  assert float(lex.map_accuracy(post, x[:, :-1])[0]) in (0.0, 1.0)
  # ...while prediction becomes near certain (the rotation does not matter for it).
  assert float(nll[0, -1]) < 0.1 < float(nll[0, 0])
  known = lex.known_cipher_nll(m, x)
  assert np.all(np.asarray(nll) >= np.asarray(known) - 1e-5)


def test_bad_inputs_raise():
  with pytest.raises(ConfigError, match="vocab_size"):
    lex.all_permutations(8)
  with pytest.raises(ConfigError, match="transition_VxV"):
    lex.bayes_lexinvariant_markov(M3 * 2, PI3, np.array([[0, 1]]))
  with pytest.raises(ConfigError, match="tokens_BxT1"):
    lex.bayes_lexinvariant_markov(M3, PI3, np.array([[0, 3]]))
