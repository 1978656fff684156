"""Unigram models over tokens and per-character cross-entropy (arXiv 2404.08335, Sec. 2 & 4).

The paper scores a tokenizer by the best unigram model over its tokens, normalised per source
character: L = -(1/m) sum_i log Q(t_i) for a string of m characters encoded as t_1..t_n. The
paper's unigram model also carries a distribution over the token count, Q_#(n); its
contribution is at most log(m)/m per character, which vanishes, so it is dropped here (stated
where it matters: comparisons to H_inf are per character, never per token).
"""
from __future__ import annotations

import numpy as np
from jaxtyping import Float

from jaxtok.config import require


def unigram_fit(ids, vocab_size: int, alpha: float = 0.5) -> Float[np.ndarray, "V"]:
  """log Q over ``vocab_size`` tokens: add-``alpha`` smoothed counts (alpha=0.5: KT estimator)."""
  ids = np.asarray(ids, np.int64)
  require(ids.ndim == 1 and ids.size >= 1, "ids", "a non-empty 1-D sequence of token ids",
          ids.shape)
  require(ids.min() >= 0 and ids.max() < vocab_size, "ids",
          f"token ids in [0, vocab_size={vocab_size})", (int(ids.min()), int(ids.max())))
  require(alpha > 0, "alpha", "> 0 (unseen test tokens need mass)", alpha)
  counts = np.bincount(ids, minlength=vocab_size).astype(np.float64) + alpha
  return np.log(counts / counts.sum())


def per_char_cross_entropy(logq_V: np.ndarray, ids, n_chars: int) -> float:
  """-(1/n_chars) sum log Q(t_i): nats per source character (no token-count term)."""
  ids = np.asarray(ids, np.int64)
  require(n_chars >= 1, "n_chars", "a positive number of characters", n_chars)
  require(ids.size == 0 or (ids.min() >= 0 and ids.max() < len(logq_V)), "ids",
          f"token ids in [0, {len(logq_V)})", "out of range ids")
  return float(-logq_V[ids].sum() / n_chars)


def chars_per_token(ids, n_chars: int) -> float:
  ids = np.asarray(ids)
  require(ids.size >= 1, "ids", "at least one token", ids.size)
  return n_chars / ids.size


def token_unigram_loss(vocab, train_data, test_data, method: str = "greedy",
                       alpha: float = 0.5) -> dict[str, float]:
  """Fit the unigram on ``train_data``'s tokens, score ``test_data`` per character.

  ``vocab`` is anything with ``encode(data[, method])`` and ``len`` (a ``Vocabulary`` or a
  ``BPE``); for a BPE, ``method="merges"`` encodes by the merge list.
  """
  enc = (lambda x: vocab.encode(x)) if method == "merges" else (lambda x: vocab.encode(x, method))
  train_ids, test_ids = enc(train_data), enc(test_data)
  logq = unigram_fit(train_ids, len(vocab), alpha)
  return {"loss": per_char_cross_entropy(logq, test_ids, len(test_data)),
          "chars_per_token": chars_per_token(test_ids, len(test_data)), "d": len(vocab)}
