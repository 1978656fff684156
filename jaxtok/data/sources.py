"""Data sources (DESIGN.md decision 7): random-access, seeded, indexable.

A synthetic source is a pure function of ``(index, seed)``: example ``i`` is generated from
``np.random.default_rng([seed, i])``, so any worker on any host produces the same example for
the same index and a resumed run sees exactly the batches it would have seen.
"""
from __future__ import annotations

from typing import Any, Protocol

import numpy as np


class Source(Protocol):
  """What grain needs: ``len`` and ``getitem`` returning a dict of numpy arrays."""

  def __len__(self) -> int: ...

  def __getitem__(self, index: int) -> dict[str, np.ndarray]: ...


class SeededSource:
  """Base class for synthetic generators; subclasses implement ``generate(rng)``."""

  def __init__(self, seed: int, length: int = 2**31 - 1):
    if length <= 0:
      raise ValueError(f"length: expected a positive number of examples, got {length}")
    self.seed = seed
    self.length = length

  def __len__(self) -> int:
    return self.length

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not 0 <= index < self.length:
      raise IndexError(f"index {index} out of range [0, {self.length})")
    return self.generate(np.random.default_rng([self.seed, int(index)]))

  def generate(self, rng: np.random.Generator) -> dict[str, Any]:
    raise NotImplementedError


class MarkovChainSource(SeededSource):
  """Sequences from one fixed random first-order Markov chain (transition rows ~ Dirichlet)."""

  def __init__(self, vocab_size: int, seq_len: int, seed: int, chain_seed: int = 0,
               concentration: float = 0.3, length: int = 2**31 - 1):
    super().__init__(seed, length)
    if vocab_size < 2 or seq_len < 2:
      raise ValueError(f"vocab_size and seq_len must be >= 2, got {vocab_size}, {seq_len}")
    chain_rng = np.random.default_rng(chain_seed)
    self.transition_VxV = chain_rng.dirichlet(np.full(vocab_size, concentration), vocab_size)
    self.seq_len = seq_len

  def generate(self, rng):
    v = self.transition_VxV.shape[0]
    tokens = np.empty(self.seq_len + 1, np.int32)
    tokens[0] = rng.integers(v)
    u = rng.random(self.seq_len)
    cdf_VxV = np.cumsum(self.transition_VxV, axis=1)
    for t in range(self.seq_len):
      tokens[t + 1] = min(np.searchsorted(cdf_VxV[tokens[t]], u[t]), v - 1)
    return {"tokens": tokens}


class TokenWindows:
  """Packed LM windows over one long token stream: example i = tokens[iL : iL + L + 1]."""

  def __init__(self, tokens: np.ndarray, seq_len: int):
    if seq_len < 1:
      raise ValueError(f"seq_len: expected >= 1, got {seq_len}")
    if len(tokens) < seq_len + 1:
      raise ValueError(f"tokens: need at least seq_len + 1 = {seq_len + 1} tokens, got "
                       f"{len(tokens)}")
    self.tokens = tokens
    self.seq_len = seq_len

  def __len__(self) -> int:
    return (len(self.tokens) - 1) // self.seq_len

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    start = int(index) * self.seq_len
    return {"tokens": np.asarray(self.tokens[start:start + self.seq_len + 1], np.int32)}
