"""Byte-pair encoding over arbitrary integer symbol alphabets (not only bytes).

Training (Sennrich et al., arXiv 1508.07909; the BPE tokenizer analysed in arXiv 2404.08335
Sec. 5): start from the alphabet, repeatedly merge the most frequent adjacent pair of tokens into
a new token until the vocabulary has ``d`` tokens. Encoding applies the merges in the order they
were learned. There is no pre-tokenisation: a Markov string is one stream.

Both run on a doubly linked list over positions with a per-pair index of positions, so a merge
costs time proportional to its occurrences (all merges together O(n log n)), not to the string.
Pair counts are of adjacent occurrences; overlapping ones (``aaa`` for the pair ``aa``) are merged
left to right.
"""
from __future__ import annotations

import heapq
import json
from collections import defaultdict
from pathlib import Path

import numpy as np

from jaxtok.config import require
from jaxtok.tokenize.vocab_encode import (Vocabulary, as_symbols, check_training_data,
                                          training_alphabet)


class _PairList:
  """The token string as a linked list, with adjacent-pair counts and position lists."""

  def __init__(self, ids: list[int]):
    n = len(ids)
    self.sym = list(ids)
    self.prev = list(range(-1, n - 1))
    self.next = list(range(1, n + 1))
    if n:
      self.next[-1] = -1
    self.alive = [True] * n
    self.count: dict[tuple[int, int], int] = defaultdict(int)
    self.where: dict[tuple[int, int], list[int]] = defaultdict(list)
    for i in range(n - 1):
      pair = (ids[i], ids[i + 1])
      self.count[pair] += 1
      self.where[pair].append(i)

  def merge(self, pair: tuple[int, int], new: int, changed: set | None = None) -> int:
    """Replaces every (left-to-right, non-overlapping) occurrence of ``pair`` with ``new``.

    ``changed`` collects the pairs whose counts went up or down (for the callers' heaps).
    """
    a, b = pair
    sym, nxt, prv, count, where = self.sym, self.next, self.prev, self.count, self.where
    merged = 0
    for i in sorted(where.pop(pair, ())):
      j = nxt[i]
      if not self.alive[i] or sym[i] != a or j < 0 or sym[j] != b:
        continue  # stale entry: this occurrence was consumed by an earlier merge
      p, n = prv[i], nxt[j]
      count[pair] -= 1
      if p >= 0:
        left_old, left_new = (sym[p], a), (sym[p], new)
        count[left_old] -= 1
        count[left_new] += 1
        where[left_new].append(p)
        if changed is not None:
          changed.update((left_old, left_new))
      if n >= 0:
        right_old, right_new = (b, sym[n]), (new, sym[n])
        count[right_old] -= 1
        count[right_new] += 1
        where[right_new].append(i)
        if changed is not None:
          changed.update((right_old, right_new))
      sym[i] = new
      self.alive[j] = False
      nxt[i] = n
      if n >= 0:
        prv[n] = i
      merged += 1
    self.count.pop(pair, None)
    return merged

  def tokens(self) -> list[int]:
    out, i = [], (0 if self.sym else -1)
    while i >= 0:
      out.append(self.sym[i])
      i = self.next[i]
    return out


class BPE:
  """Merge list + vocabulary: token id of merge r is ``len(alphabet) + r``."""

  def __init__(self, alphabet, merges):
    alphabet = sorted(int(a) for a in alphabet)
    require(len(alphabet) >= 1, "alphabet", "at least one symbol", alphabet)
    self.merges: list[tuple[int, int]] = [(int(x), int(y)) for x, y in merges]
    tokens: list[tuple[int, ...]] = [(a,) for a in alphabet]
    for r, (x, y) in enumerate(self.merges):
      require(0 <= x < len(tokens) and 0 <= y < len(tokens), f"merges[{r}]",
              f"ids of earlier tokens (< {len(tokens)})", (x, y))
      tokens.append(tokens[x] + tokens[y])
    self.vocab = Vocabulary(tokens, kind="bpe")
    self.symbol_id = {a: i for i, a in enumerate(alphabet)}
    self.rank = {m: r for r, m in enumerate(self.merges)}

  def __len__(self) -> int:
    return len(self.vocab)

  @property
  def alphabet(self) -> list[int]:
    return self.vocab.alphabet

  def encode(self, data) -> np.ndarray:
    """Applies the merges in learned order (lowest rank first, all occurrences each)."""
    seq = as_symbols(data)
    self.vocab._check_symbols(seq)
    pl = _PairList([self.symbol_id[s] for s in seq.tolist()])
    n_alpha = len(self.alphabet)
    heap = [(self.rank[p], p) for p in pl.where if p in self.rank]
    heapq.heapify(heap)
    changed: set[tuple[int, int]] = set()
    while heap:
      r, pair = heapq.heappop(heap)
      if pair not in pl.where:
        continue
      changed.clear()
      pl.merge(pair, n_alpha + r, changed)
      # New pairs always rank after the merge that made them (their parts must exist first), so
      # popping by rank applies the merges in learned order.
      for p in changed:
        if p in self.rank and p in pl.where:
          heapq.heappush(heap, (self.rank[p], p))
    return np.asarray(pl.tokens(), np.int32)

  def decode(self, ids) -> np.ndarray:
    return self.vocab.decode(ids)

  def to_json(self) -> dict:
    return {"kind": "bpe", "alphabet": self.alphabet, "merges": [list(m) for m in self.merges]}

  @classmethod
  def from_json(cls, obj: dict) -> "BPE":
    require(isinstance(obj, dict) and obj.get("kind") == "bpe", "json",
            "an object with kind='bpe', 'alphabet' and 'merges'", obj.get("kind") if
            isinstance(obj, dict) else type(obj).__name__)
    return cls(obj["alphabet"], obj["merges"])

  def save(self, path: str | Path) -> None:
    Path(path).write_text(json.dumps(self.to_json()))

  @classmethod
  def load(cls, path: str | Path) -> "BPE":
    try:
      obj = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}: not a BPE JSON file ({e})") from e
    return cls.from_json(obj)


def bpe_train(data, d: int, alphabet=None) -> BPE:
  """Learns merges until the vocabulary has ``d`` tokens (or no pair occurs twice).

  Ties between equally frequent pairs go to the smallest (left id, right id), so training is
  deterministic.
  """
  seq = as_symbols(data)
  check_training_data(seq)
  alpha = training_alphabet(seq, alphabet)
  require(isinstance(d, (int, np.integer)) and d >= len(alpha), "d",
          f"a dictionary size >= the alphabet size {len(alpha)}", d)
  symbol_id = {a: i for i, a in enumerate(alpha)}
  pl = _PairList([symbol_id[s] for s in seq.tolist()])
  heap = [(-c, p) for p, c in pl.count.items()]
  heapq.heapify(heap)
  merges: list[tuple[int, int]] = []
  changed: set[tuple[int, int]] = set()
  while len(alpha) + len(merges) < d and heap:
    neg, pair = heapq.heappop(heap)
    if pl.count.get(pair, 0) != -neg:
      continue  # stale heap entry; the current count was pushed when it changed
    if -neg < 2:
      break  # merging a pair seen once compresses nothing learnable
    changed.clear()
    pl.merge(pair, len(alpha) + len(merges), changed)
    merges.append(pair)
    # A changed count is pushed afresh; its old heap entry goes stale (skipped when popped).
    for p in changed:
      c = pl.count.get(p, 0)
      if c > 0:
        heapq.heappush(heap, (-c, p))
  return BPE(alpha, merges)

