"""Verification of the tokenization guarantees of arXiv 2404.08335 on a switching source.

Source: k=3, p=q=0.2 (delta = 0.2, H_inf = h(0.2), character unigram h(1/2) = log 2). An LZW
dictionary is learned on one sample, the add-1/2 unigram over its greedy tokens is fitted on a
second and scored per character on a third (the token-count term Q_#(m) is dropped; it is
O(log m / m) per character).

- G3: the LZW unigram loss is non-increasing in d over {64, 256, 1024} and below the character
  unigram by more than 0.1 at d = 1024.
- G4: the paper's Sec. 4 LZW theorem, in the form our notes record (core_papers.md Sec. 3,
  not re-checked against the v2 body, which could not be retrieved): with all transition
  probabilities >= delta, the best unigram over an LZW dictionary of size d has per-character
  loss <= H_inf / (1 - eps), eps = log(1/delta) / (0.99 log d); checked wherever eps < 1.
"""
import jax
import numpy as np
import pytest

from jaxtok import markov
from jaxtok.tokenize.lzw import lzw_train
from jaxtok.tokenize.unigram import per_char_cross_entropy, unigram_fit

K, P, Q = 3, 0.2, 0.2
SIZES = (16, 64, 256, 1024)


@pytest.fixture(scope="module")
def lzw_losses():
  x = np.asarray(markov.sample_switching(jax.random.key(0), 500_000, K, P, Q))
  dict_data, fit_data, test = x[:100_000], x[100_000:300_000], x[300_000:]
  out = {}
  for d in SIZES:
    vocab = lzw_train(dict_data, d)
    assert len(vocab) == d
    logq = unigram_fit(vocab.encode(fit_data), d)
    out[d] = per_char_cross_entropy(logq, vocab.encode(test), len(test))
  return out


def test_lzw_loss_non_increasing_and_beats_char_unigram(lzw_losses):
  st = markov.switching_stats(K, P, Q)
  assert lzw_losses[64] >= lzw_losses[256] >= lzw_losses[1024]
  assert lzw_losses[1024] < st["unigram_loss"] - 0.1


def test_lzw_ratio_under_the_theorem_bound(lzw_losses):
  st = markov.switching_stats(K, P, Q)
  checked = 0
  for d, loss in lzw_losses.items():
    bound = markov.lzw_bound(st["entropy_rate"], st["delta"], d)
    if np.isfinite(bound):
      checked += 1
      assert loss >= st["entropy_rate"]  # no unigram beats the entropy rate (sanity)
      assert loss <= bound, (d, loss / st["entropy_rate"], bound / st["entropy_rate"])
  assert checked == len(SIZES)  # eps < 1 for every d here (log 5 < 0.99 log 16)


def test_bound_is_vacuous_until_log_d_exceeds_log_inverse_delta():
  assert markov.lzw_bound(0.5, 0.2, 5) == float("inf")
  assert np.isfinite(markov.lzw_bound(0.5, 0.2, 6))
  bounds = [markov.lzw_bound(0.5, 0.2, d) for d in (16, 256, 4096, 2 ** 20)]
  assert all(a > b > 0.5 for a, b in zip(bounds, bounds[1:]))
