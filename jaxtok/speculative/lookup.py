"""Prompt-lookup decoding (Saxena 2023; the n-gram drafter Hugging Face transformers ships as
``prompt_lookup_num_tokens``), on device.

For n from ``max_ngram`` down to 1: find the leftmost earlier occurrence of the context's last n
tokens (prompt + emitted so far) that has at least one token after it, and draft the tokens that
followed it (up to N - 1, never past the context's end) as a chain. No match: the tree is the
root alone and the step decodes one token. Stateless.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from jaxtok.config import require
from jaxtok.speculative.drafter import HostTreeDrafter
from jaxtok.speculative.tree import DraftTree, chain


@dataclasses.dataclass(frozen=True)
class PromptLookup:
  n_nodes: int = 8  # root + up to 7 drafted tokens
  max_ngram: int = 2  # transformers' max_matching_ngram_size default
  prompt_logits = 0

  def __post_init__(self):
    require(self.n_nodes >= 1, "n_nodes", ">= 1", self.n_nodes)
    require(self.max_ngram >= 1, "max_ngram", ">= 1", self.max_ngram)

  def init(self, vocab_size: int):
    return ()

  def propose(self, state, ctx, root_B: Int[Array, "B"]) -> DraftTree:
    tok_BxC, len_B = ctx.tokens_BxC, ctx.len_B
    b, c = tok_BxC.shape
    j_C = jnp.arange(c)
    best_B = jnp.full((b,), -1, jnp.int32)  # end index of the chosen match
    for n in range(1, self.max_ngram + 1):  # longer n-grams override shorter ones
      match_BxC = (j_C[None, :] >= n - 1) & (j_C[None, :] <= len_B[:, None] - 2)
      match_BxC &= (len_B >= n + 1)[:, None]
      for o in range(n):
        tail_B = jnp.take_along_axis(tok_BxC, jnp.maximum(len_B - 1 - o, 0)[:, None], 1)
        prev_BxC = jnp.roll(tok_BxC, o, axis=1)  # prev[j] = tok[j - o]
        match_BxC &= prev_BxC == tail_B
      found_B = jnp.any(match_BxC, -1)
      best_B = jnp.where(found_B, jnp.argmax(match_BxC, -1).astype(jnp.int32), best_B)
    n = self.n_nodes
    src_BxN = best_B[:, None] + jnp.arange(n, dtype=jnp.int32)[None, :]  # node i <- tok[best + i]
    draft_BxN = jnp.take_along_axis(tok_BxC, jnp.clip(src_BxN, 0, c - 1), axis=1)
    valid_BxN = (best_B[:, None] >= 0) & (src_BxN < len_B[:, None])
    tokens_BxN = draft_BxN.at[:, 0].set(root_B)
    return chain(tokens_BxN, valid_BxN.at[:, 0].set(True))

  def observe(self, state, tree, logits_BxNxV, acc):
    return state


class HostPromptLookup(HostTreeDrafter):
  """The same drafter on the host (numpy), a ``HostDrafter``: it shares the host step's
  compilation with SuffixDecoding at the same N, and drafts of few tokens can use a smaller
  verify bucket."""

  def __init__(self, n_nodes: int = 8, max_ngram: int = 2,
               buckets: tuple[int, ...] | None = None):
    super().__init__(n_nodes, buckets)
    require(max_ngram >= 1, "max_ngram", ">= 1", max_ngram)
    self.max_ngram = max_ngram

  def draft(self, ctx: list[int]) -> list[int]:
    """Tokens after the leftmost earlier occurrence of the longest matching tail n-gram."""
    a = np.asarray(ctx)
    for n in range(min(self.max_ngram, len(a) - 1), 0, -1):
      tail = a[-n:]
      ends = np.arange(n - 1, len(a) - 1)  # match a[j-n+1 .. j], j <= len - 2
      ok = np.ones(len(ends), bool)
      for o in range(n):
        ok &= a[ends - o] == tail[n - 1 - o]
      if ok.any():
        j = int(ends[np.argmax(ok)])
        return [int(t) for t in a[j + 1:j + self.n_nodes]]
    return []

  def draft_row(self, row: int, ctx: list[int]) -> tuple[list[int], list[int]]:
    d = self.draft(ctx)
    return d, list(range(len(d)))  # a chain: node i's parent is node i - 1
