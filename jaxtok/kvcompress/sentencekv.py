"""SentenceKV (Zhu et al., arXiv 2504.00970, COLM 2025; zzbright1998/SentenceKV).

Sentence-level semantic keys: the prompt is cut into sentences at boundary tokens (for code a
sentence is a line: the newline tokens); each (head, sentence) is represented by the mean of its
keys mu_{h,s}, and sentences are ranked per head by their relevance to the current queries,
mu_{h,s} . q_bar_h, and taken whole in rank order until the budget, besides ``sinks`` and the
observation window (§3.2-3.3).

Our choices: the queries are not returned by the forward, so the relevance of a sentence is
the mean over its tokens of the log attention mass the observation window gave them, which
equals q_bar . mu_s / sqrt(Dh) up to a per-head constant for one query (log a[t, j] =
q_t.k_j / sqrt(Dh) - lse_t is linear in k_j); for several queries and heads it is the log of a
sum, an approximation. Selection is done once at prefill (the released code re-selects per
decode step with masks that free no memory; our compressed cache is really smaller).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxtok.config import require
from jaxtok.kvcompress.base import PROTECT, Policy, recent_mask, valid_slots


def sentence_ids(tokens_BxS, boundary_ids):
  """Sentence index of each slot; a boundary token ends (belongs to) its sentence."""
  is_b = jnp.isin(tokens_BxS, jnp.asarray(boundary_ids, jnp.int32)).astype(jnp.int32)
  return jnp.cumsum(is_b, axis=-1) - is_b


@dataclasses.dataclass(frozen=True)
class SentenceKV(Policy):
  name = "sentencekv"
  needs_window = True
  boundary_ids: tuple[int, ...] = ()
  sinks: int = 4
  vocab_size: int | None = None  # if given, boundary ids are checked against it

  def __post_init__(self):
    require(len(self.boundary_ids) > 0, "boundary_ids", "at least one sentence-boundary token id",
            self.boundary_ids)
    hi = self.vocab_size if self.vocab_size is not None else 2**31 - 1
    require(all(0 <= i < hi for i in self.boundary_ids), "boundary_ids",
            f"token ids in [0, {hi})", self.boundary_ids)
    require(self.sinks >= 0, "sinks", ">= 0", self.sinks)

  def score(self, layer, obs, l, budget_BxK):
    if obs.tokens_BxS is None or obs.window is None:
      raise ValueError("sentencekv: the observation needs tokens_BxS and window statistics")
    b, k, s = layer.pos.shape
    valid = valid_slots(layer)
    tok_BxKxS = jnp.take_along_axis(obs.tokens_BxS[:, None, :],
                                    jnp.clip(layer.pos, 0, obs.tokens_BxS.shape[1] - 1), axis=2)
    sid_BxKxS = jnp.where(valid, sentence_ids(tok_BxKxS, self.boundary_ids), s)
    rel = jnp.where(valid, jnp.log(obs.window[l].sum_BxKxS + 1e-9), 0.0)
    seg = lambda x, i: jax.ops.segment_sum(x, i, num_segments=s + 1)
    tot = jax.vmap(jax.vmap(seg))(rel, sid_BxKxS)
    cnt = jax.vmap(jax.vmap(seg))(valid.astype(jnp.float32), sid_BxKxS)
    sent_score = tot / jnp.maximum(cnt, 1.0)
    score = jnp.take_along_axis(sent_score, sid_BxKxS, axis=2)
    protect = ((layer.pos >= 0) & (layer.pos < self.sinks)) | recent_mask(layer, obs.window_size)
    return jnp.where(protect, PROTECT, score)
