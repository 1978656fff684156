"""Count-based byte n-gram baselines (bits per token) for honest comparison with trained LMs."""
from __future__ import annotations

import numpy as np


def unigram_bits(train: np.ndarray, val: np.ndarray, vocab: int, alpha: float = 1.0) -> float:
  """Cross-entropy (bits/token) of ``val`` under add-alpha unigram counts from ``train``."""
  counts = np.bincount(train, minlength=vocab).astype(np.float64) + alpha
  logp = np.log2(counts / counts.sum())
  return float(-logp[val].mean())


def entropy_bits(tokens: np.ndarray, vocab: int) -> float:
  """Empirical unigram entropy (bits/token) of ``tokens`` itself."""
  p = np.bincount(tokens, minlength=vocab).astype(np.float64)
  p = p[p > 0] / p.sum()
  return float(-(p * np.log2(p)).sum())


def bigram_bits(train: np.ndarray, prev: np.ndarray, nxt: np.ndarray, vocab: int,
                alpha: float = 0.1) -> float:
  """Cross-entropy (bits/token) of ``nxt`` given ``prev`` under add-alpha bigrams of ``train``."""
  counts = np.zeros((vocab, vocab), np.float64)
  np.add.at(counts, (train[:-1].astype(np.int64), train[1:].astype(np.int64)), 1.0)
  counts += alpha
  logp = np.log2(counts / counts.sum(axis=1, keepdims=True))
  return float(-logp[prev.astype(np.int64), nxt.astype(np.int64)].mean())
