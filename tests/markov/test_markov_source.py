"""Exact source statistics of jaxtok.markov against closed forms and against simulation.

arXiv 2404.08335 Sec. 2: the k-th order switching source has pi_1 = p/(p+q), best character
unigram loss h(pi_1), entropy rate (q h(p) + p h(q))/(p+q), and block-tokenizer unigram loss
L(r) = [k h(pi_1) + (r-k) H_inf]/r for r >= k (h(pi_1) for r <= k). Simulation gates: within
0.01 nats of the formulas.
"""
import jax
import numpy as np
import pytest

from jaxtok import markov
from jaxtok.config import ConfigError
from jaxtok.tokenize.unigram import per_char_cross_entropy, unigram_fit
from jaxtok.tokenize.vocab_encode import block_vocabulary


@pytest.mark.parametrize("k,p,q", [(1, 0.3, 0.6), (3, 0.2, 0.3), (4, 0.8, 0.8)])
def test_general_math_matches_switching_closed_forms(k, p, q):
  src = markov.switching_source(k, p, q)
  st = markov.switching_stats(k, p, q)
  assert markov.symbol_marginal(src)[1] == pytest.approx(st["pi1"], abs=1e-12)
  assert markov.unigram_loss(src) == pytest.approx(st["unigram_loss"], abs=1e-12)
  assert markov.entropy_rate(src) == pytest.approx(st["entropy_rate"], abs=1e-12)
  assert markov.min_transition_probability(src) == pytest.approx(st["delta"])
  h1, hinf = st["unigram_loss"], st["entropy_rate"]
  for r in range(1, 10):
    expected = h1 if r <= k else (k * h1 + (r - k) * hinf) / r
    assert markov.block_unigram_loss(src, r) == pytest.approx(expected, abs=1e-12)


def test_stationary_distribution_is_invariant():
  src = markov.random_source(2, 3, seed=1)
  mu = markov.stationary_contexts(src)
  assert np.allclose(mu @ src.context_chain_SxS(), mu, atol=1e-12)
  assert mu.sum() == pytest.approx(1.0) and (mu > 0).all()


def test_switching_sampler_matches_formulas():
  k, p, q = 3, 0.2, 0.3
  st = markov.switching_stats(k, p, q)
  x = np.asarray(markov.sample_switching(jax.random.key(0), 300_000, k, p, q))
  assert x.dtype == np.int32 and set(np.unique(x)) == {0, 1}
  assert x.mean() == pytest.approx(st["pi1"], abs=0.01)
  # G1: the character-unigram MLE loss is within 0.01 of h(pi_1).
  train, test = x[:200_000], x[200_000:]
  logq = unigram_fit(train, 2)
  assert per_char_cross_entropy(logq, test, len(test)) == pytest.approx(st["unigram_loss"],
                                                                         abs=0.01)
  # Empirical conditional entropy given the symbol k back is the entropy rate.
  prev, cur = x[:-k], x[k:]
  h = 0.0
  for a in (0, 1):
    pa = cur[prev == a].mean()
    h += (prev == a).mean() * markov.binary_entropy(pa)
  assert h == pytest.approx(st["entropy_rate"], abs=0.01)


def test_block_tokenizer_unigram_matches_L_r():
  """G2: block-tokenizer unigram loss (fit on train, scored on test) within 0.01 of L(r)."""
  k, p, q = 3, 0.2, 0.3
  src = markov.switching_source(k, p, q)
  x = np.asarray(markov.sample_switching(jax.random.key(1), 400_000, k, p, q))
  train, test = x[:200_000], x[200_000:]
  for r in range(1, 9):
    vocab = block_vocabulary([0, 1], r)
    logq = unigram_fit(vocab.encode(train), len(vocab))
    loss = per_char_cross_entropy(logq, vocab.encode(test), len(test))
    assert loss == pytest.approx(markov.block_unigram_loss(src, r), abs=0.01), r


def test_general_sampler_matches_block_entropies():
  src = markov.random_source(2, 3, seed=0)
  x = np.asarray(markov.sample(jax.random.key(2), src, 200_000))
  assert x.min() >= 0 and x.max() < 3
  for r in (1, 2, 3, 4):
    emp = markov.empirical_block_entropy(x, r, 3) / r
    assert emp == pytest.approx(markov.block_unigram_loss(src, r), abs=0.01), r


@pytest.mark.parametrize("kwargs,field", [
    (dict(k=3, p=0.0, q=0.2), "p"), (dict(k=3, p=0.2, q=1.0), "q"),
    (dict(k=0, p=0.2, q=0.2), "k"), (dict(k=2, p=1.5, q=0.2), "p")])
def test_bad_source_parameters_name_the_argument(kwargs, field):
  with pytest.raises(ConfigError, match=rf"^{field}:"):
    markov.switching_source(**kwargs)
  with pytest.raises(ConfigError, match=rf"^{field}:"):
    markov.sample_switching(jax.random.key(0), 10, **kwargs)


def test_non_ergodic_and_malformed_tables_are_rejected():
  with pytest.raises(ConfigError, match="ergodic"):
    markov.MarkovSource(1, 2, np.array([[1.0, 0.0], [0.0, 1.0]]))
  with pytest.raises(ConfigError, match="transition_SxA"):
    markov.MarkovSource(2, 2, np.full((2, 2), 0.5))
  with pytest.raises(ConfigError, match="^n:"):
    markov.sample(jax.random.key(0), markov.switching_source(2, 0.3, 0.3), 0)
