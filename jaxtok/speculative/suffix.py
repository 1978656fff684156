"""SuffixDecoding (Oliaro et al., arXiv 2411.04975, NeurIPS 2025): a model-free drafter that
matches the recent context against suffix trees of the prompt and of earlier responses.

Host-side, as in the paper (and ArcticInference's ``suffix_tree.cc``):

* ``SuffixTrie``: every substring of length <= ``max_depth`` of the inserted sequences, each node
  counting its occurrences C(node) (a suffix trie of bounded depth; appending a token updates the
  <= max_depth suffixes that end at it, so a per-request trie grows with the response).
* A per-request trie over prompt + response so far, and a global trie over earlier responses
  (bounded by ``max_requests``, FIFO eviction subtracts the oldest response's counts).
* Match (§3.2): for p = 1, 2, ... the node of the context's last p tokens, until a miss.
* Adaptive budget ``MAX_SPEC = min(N - 1, floor(alpha * p + beta))`` from the match length p.
* Tree expansion (Algorithm 1): best-first on D(node) = prod C(child) / C(parent) along the
  path (= C(node) / C(match) for counts that nest), children pushed while D >= tau, at most
  MAX_SPEC nodes; the draft's score is sum D (its expected accepted length under the counts'
  model). The best draft over all p and both tries wins (ties: longer p, then the request trie).
"""
from __future__ import annotations

import heapq

import numpy as np

from jaxtok.config import require
from jaxtok.speculative.drafter import HostTreeDrafter


class SuffixTrie:
  """Occurrence counts of every substring (length <= max_depth) of the inserted sequences."""

  def __init__(self, max_depth: int):
    require(max_depth >= 1, "max_depth", ">= 1", max_depth)
    self.max_depth = max_depth
    self.children: list[dict[int, int]] = [{}]
    self.count: list[int] = [0]
    self._free: list[int] = []
    self._active: dict[int, list[int]] = {}  # open sequence -> nodes of its suffixes < depth

  def _child(self, node: int, tok: int) -> int:
    c = self.children[node].get(tok)
    if c is None:
      if self._free:
        c = self._free.pop()
        self.children[c], self.count[c] = {}, 0
      else:
        c = len(self.count)
        self.children.append({})
        self.count.append(0)
      self.children[node][tok] = c
    return c

  def open(self, seq: int) -> None:
    self._active[seq] = [0]

  def append(self, seq: int, tok: int) -> None:
    """Extends open sequence ``seq`` by one token: each suffix ending at it gains one count."""
    nxt = [0]
    active = self._active[seq]
    for depth, node in enumerate(active):
      c = self._child(node, tok)
      self.count[c] += 1
      if depth + 1 < self.max_depth:
        nxt.append(c)
    self._active[seq] = nxt

  def close(self, seq: int) -> None:
    self._active.pop(seq, None)

  def add(self, seq: int, tokens) -> None:
    self.open(seq)
    for t in tokens:
      self.append(seq, int(t))
    self.close(seq)

  def remove(self, tokens) -> None:
    """Subtracts a sequence added before; nodes whose count drops to 0 are freed."""
    tokens = [int(t) for t in tokens]
    for i in range(len(tokens)):
      node = 0
      for tok in tokens[i:i + self.max_depth]:
        c = self.children[node][tok]
        self.count[c] -= 1
        if self.count[c] == 0:
          del self.children[node][tok]
          self._free_subtree(c)
          break
        node = c

  def _free_subtree(self, node: int) -> None:
    stack = [node]
    while stack:
      n = stack.pop()
      stack.extend(self.children[n].values())
      self.children[n] = {}
      self._free.append(n)

  def find(self, pattern) -> int | None:
    node = 0
    for tok in pattern:
      node = self.children[node].get(int(tok))
      if node is None:
        return None
    return node

  def occurrences(self, pattern) -> int:
    node = self.find(pattern)
    return 0 if node is None else self.count[node]


def expand(trie: SuffixTrie, match: int, max_spec: int, tau: float):
  """Best-first speculation tree below node ``match`` (Algorithm 1). Returns (tokens, parents,
  probs) in pop order - parents index the returned nodes, -1 = the match node / tree root -
  and the score sum(probs)."""
  base = trie.count[match]
  tokens, parents, probs = [], [], []
  heap, order = [], 0
  for tok, c in trie.children[match].items():
    d = trie.count[c] / base
    if d >= tau:
      heap.append((-d, order, c, -1, tok))
      order += 1
  heapq.heapify(heap)
  while heap and len(tokens) < max_spec:
    neg_d, _, node, parent, tok = heapq.heappop(heap)
    me = len(tokens)
    tokens.append(tok)
    parents.append(parent)
    probs.append(-neg_d)
    cn = trie.count[node]
    for t2, c2 in trie.children[node].items():
      d2 = -neg_d * trie.count[c2] / cn
      if d2 >= tau:
        heapq.heappush(heap, (-d2, order, c2, me, t2))
        order += 1
  return tokens, parents, probs, float(sum(probs))


class SuffixDecoding(HostTreeDrafter):
  """The drafter (a ``HostDrafter``: ``jaxtok.speculative.generate`` calls ``begin``,
  ``observe_host``, ``propose_host`` and ``finish``). Its global trie persists across calls."""

  def __init__(self, n_nodes: int = 16, *, max_depth: int = 24, alpha: float = 1.0,
               beta: float = 0.0, tau: float = 0.1, max_requests: int = 10_000,
               use_global: bool = True, buckets: tuple[int, ...] | None = None):
    super().__init__(n_nodes, buckets)
    require(0 < tau <= 1, "tau", "in (0, 1]", tau)
    require(alpha > 0, "alpha", "> 0", alpha)
    require(max_requests >= 1, "max_requests", ">= 1", max_requests)
    self.max_depth, self.alpha, self.beta, self.tau = max_depth, alpha, beta, tau
    self.max_requests, self.use_global = max_requests, use_global
    self.global_trie = SuffixTrie(max_depth)
    self._history: list[list[int]] = []  # responses in the global trie, oldest first
    self._requests: list[SuffixTrie] = []

  def begin_rows(self, prompts: list[list[int]]) -> None:
    self._requests = []
    for p in prompts:
      trie = SuffixTrie(self.max_depth)
      trie.open(0)
      for t in p:
        trie.append(0, t)
      self._requests.append(trie)

  def observe_row(self, row: int, emitted: list[int]) -> None:
    for t in emitted:
      self._requests[row].append(0, t)

  def finish(self, responses: list[list[int]]) -> None:
    if not self.use_global:
      return
    for r in responses:
      self.global_trie.add(0, r)
      self._history.append(list(r))
      if len(self._history) > self.max_requests:
        self.global_trie.remove(self._history.pop(0))

  def best_draft(self, ctx: list[int], request: SuffixTrie | None = None):
    """(tokens, parents, probs, score, p) of the best draft for a context (empty if none)."""
    best = ([], [], [], 0.0, 0)
    best_key = (0.0, 0, 0)
    tries = [(1, request)] if request is not None else []
    if self.use_global:
      tries.append((0, self.global_trie))
    for pref, trie in tries:
      for p in range(1, min(self.max_depth, len(ctx)) + 1):
        node = trie.find(ctx[-p:])
        if node is None:
          break
        max_spec = min(self.n_nodes - 1, int(np.floor(self.alpha * p + self.beta)))
        if max_spec < 1:
          continue
        toks, pars, probs, score = expand(trie, node, max_spec, self.tau)
        key = (score, p, pref)
        if toks and key > best_key:
          best, best_key = (toks, pars, probs, score, p), key
    return best

  def draft_row(self, row: int, ctx: list[int]) -> tuple[list[int], list[int]]:
    toks, pars, _, _, _ = self.best_draft(ctx, self._requests[row])
    return toks, [q + 1 for q in pars]  # expand's -1 (the match node) is the tree's root
