"""Vocabulary-only encodings over arbitrary symbol alphabets (host-side numpy/Python).

A ``Vocabulary`` is a list of tokens, each a non-empty tuple of integer symbols; it must hold
every single symbol of its alphabet, so every string over the alphabet is encodable. Two
encodings need no merge list ("Train It and Forget It", arXiv 2508.06621, Sec. 3):

- ``greedy``: longest-prefix match, left to right (this is also how an LZW dictionary encodes,
  arXiv 2404.08335 Sec. 4);
- ``min_count``: the fewest tokens whose concatenation is the string, by dynamic programming
  over positions (cost[j] = min over tokens t ending at j of cost[j - |t|] + 1).

Both walk a trie of the vocabulary, so each position costs O(longest token). The block tokenizer
of arXiv 2404.08335 Sec. 3 (all A^r strings of length r) is ``block_vocabulary``.
"""
from __future__ import annotations

import itertools
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from jaxtok.config import require

ENCODINGS = ("greedy", "min_count")


def as_symbols(data, name: str = "data") -> np.ndarray:
  """A 1-D int64 array of symbols from an array, a list of ints, or a str (code points)."""
  if isinstance(data, str):
    data = [ord(c) for c in data]
  arr = np.asarray(data)
  require(arr.ndim == 1, name, "a 1-D sequence of integer symbols", f"shape {arr.shape}")
  require(arr.size == 0 or np.issubdtype(arr.dtype, np.integer), name, "integer symbols",
          arr.dtype)
  return arr.astype(np.int64)


def check_training_data(seq: np.ndarray, name: str = "data") -> None:
  require(len(seq) >= 2, name, "at least 2 symbols to learn a dictionary from", len(seq))
  require(len(np.unique(seq)) >= 2, name, "at least 2 distinct symbols", "a single symbol")


def training_alphabet(seq: np.ndarray, alphabet=None) -> list[int]:
  """The symbols of ``seq`` together with any extra ``alphabet`` symbols, sorted."""
  extra = () if alphabet is None else np.asarray(alphabet).ravel().tolist()
  return sorted(set(np.unique(seq).tolist()) | {int(a) for a in extra})


class Vocabulary:
  """Tokens (tuples of symbols) with ids 0..d-1; includes every symbol of its alphabet."""

  def __init__(self, tokens: Iterable[Sequence[int]], kind: str = "vocabulary"):
    self.tokens: list[tuple[int, ...]] = [tuple(int(s) for s in t) for t in tokens]
    self.kind = kind
    require(all(len(t) >= 1 for t in self.tokens), "tokens", "non-empty tokens", "an empty one")
    self.index = {t: i for i, t in enumerate(self.tokens)}
    require(len(self.index) == len(self.tokens), "tokens", "distinct tokens", "duplicates")
    self.alphabet = sorted({t[0] for t in self.tokens if len(t) == 1})
    missing = {s for t in self.tokens for s in t} - set(self.alphabet)
    require(not missing, "tokens", "every symbol of every token also present as a 1-symbol token",
            f"missing {sorted(missing)[:8]}")
    self.lengths = np.array([len(t) for t in self.tokens], np.int64)
    self._trie: dict | None = None

  def __len__(self) -> int:
    return len(self.tokens)

  @property
  def trie(self) -> dict:
    """Nested dicts symbol -> child; key None holds the token id ending there."""
    if self._trie is None:
      root: dict = {}
      for i, t in enumerate(self.tokens):
        node = root
        for s in t:
          node = node.setdefault(s, {})
        node[None] = i
      self._trie = root
    return self._trie

  def _check_symbols(self, seq: np.ndarray) -> None:
    unknown = np.setdiff1d(np.unique(seq), np.asarray(self.alphabet, np.int64))
    require(unknown.size == 0, "data", f"symbols from the vocabulary's alphabet "
            f"({len(self.alphabet)} symbols)", f"unknown symbols {unknown[:8].tolist()}")

  def encode(self, data, method: str = "greedy") -> np.ndarray:
    require(method in ENCODINGS, "method", f"one of {ENCODINGS}", method)
    seq = as_symbols(data)
    self._check_symbols(seq)
    return greedy_encode(seq, self) if method == "greedy" else min_count_encode(seq, self)

  def decode(self, ids) -> np.ndarray:
    ids = np.asarray(ids, np.int64).ravel()
    if ids.size:
      require(ids.min() >= 0 and ids.max() < len(self), "ids", f"token ids in [0, {len(self)})",
              f"range [{ids.min()}, {ids.max()}]")
    return np.fromiter(itertools.chain.from_iterable(self.tokens[i] for i in ids), np.int64)

  def to_json(self) -> dict:
    return {"kind": self.kind, "tokens": [list(t) for t in self.tokens]}

  @classmethod
  def from_json(cls, obj: dict) -> "Vocabulary":
    require(isinstance(obj, dict) and "tokens" in obj, "json", "an object with 'tokens'",
            type(obj).__name__)
    return cls(obj["tokens"], obj.get("kind", "vocabulary"))

  def save(self, path: str | Path) -> None:
    Path(path).write_text(json.dumps(self.to_json()))

  @classmethod
  def load(cls, path: str | Path) -> "Vocabulary":
    try:
      obj = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not a vocabulary JSON file ({e})") from e
    return cls.from_json(obj)


def _matches(trie: dict, symbols: list, i: int):
  """(token id, end) of every vocabulary token that starts at position i, shortest first."""
  node, j = trie, i
  while j < len(symbols):
    node = node.get(symbols[j])
    if node is None:
      return
    j += 1
    tid = node.get(None)
    if tid is not None:
      yield tid, j


def greedy_encode(seq: np.ndarray, vocab: Vocabulary) -> np.ndarray:
  """Longest-prefix match left to right."""
  symbols, out, i = seq.tolist(), [], 0
  while i < len(symbols):
    best = None
    for best in _matches(vocab.trie, symbols, i):
      pass
    if best is None:
      raise ValueError(f"data: symbol {symbols[i]} at position {i} is not in the vocabulary")
    out.append(best[0])
    i = best[1]
  return np.asarray(out, np.int32)


def min_count_encode(seq: np.ndarray, vocab: Vocabulary) -> np.ndarray:
  """Fewest tokens covering ``seq`` (ties: the earliest-found segmentation)."""
  symbols, n = seq.tolist(), len(seq)
  inf = n + 1
  cost = [0] + [inf] * n
  back = [-1] * (n + 1)  # token id ending at position j on an optimal path
  for i in range(n):
    if cost[i] == inf:
      continue
    for tid, j in _matches(vocab.trie, symbols, i):
      if cost[i] + 1 < cost[j]:
        cost[j], back[j] = cost[i] + 1, tid
  if cost[n] == inf:
    raise ValueError("data: not encodable with this vocabulary (a symbol is missing)")
  out, j = [], n
  while j > 0:
    out.append(back[j])
    j -= len(vocab.tokens[back[j]])
  return np.asarray(out[::-1], np.int32)


def block_vocabulary(alphabet: Sequence[int], r: int) -> Vocabulary:
  """The r-block tokenizer: all |A|^r strings of length r, plus the single symbols.

  Greedy encoding then cuts the string into consecutive r-blocks; single symbols only encode a
  tail shorter than r.
  """
  require(isinstance(r, (int, np.integer)) and r >= 1, "r", "a block length >= 1", r)
  alphabet = sorted(int(a) for a in alphabet)
  require(len(alphabet) >= 2, "alphabet", "at least 2 symbols", alphabet)
  singles = [(a,) for a in alphabet]
  blocks = [] if r == 1 else list(itertools.product(alphabet, repeat=r))
  return Vocabulary(singles + blocks, kind=f"block{r}")
