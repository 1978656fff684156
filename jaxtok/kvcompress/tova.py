"""TOVA - Token Omission Via Attention (Oren et al., arXiv 2401.06104).

Score of slot j = the *current* (last) query's attention to it, averaged over all heads of the
layer (§3: one kept set per layer, as kvpress's ``TOVAPress``); no accumulation over queries.
Run every decoding step it drops the argmin, the paper's rule. ``keep_last`` (default True)
always keeps the newest slot, as kvpress's ``TOVAPress`` (the paper does not force it; the last
token's self-attention is usually among the largest anyway).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxtok.kvcompress.policy import PROTECT, Policy, recent_mask


@dataclasses.dataclass(frozen=True)
class TOVA(Policy):
  name = "tova"
  merges = False
  keep_last: bool = True

  def score(self, layer, obs, l, budget_BxK):
    last_BxKxS = obs.total[l].last_BxKxS
    score = jnp.broadcast_to(jnp.mean(last_BxKxS, axis=1, keepdims=True), last_BxKxS.shape)
    return jnp.where(recent_mask(layer, 1), PROTECT, score) if self.keep_last else score
