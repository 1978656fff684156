"""TOVA - Token Omission Via Attention (Oren et al., arXiv 2401.06104).

Score of slot j = the *current* (last) query's attention to it, averaged over all heads of the
layer (§3: one kept set per layer, as kvpress's ``TOVAPress``); no accumulation over queries.
Run every decoding step it drops the argmin, the paper's rule.
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxtok.kvcompress.base import Policy


@dataclasses.dataclass(frozen=True)
class TOVA(Policy):
  name = "tova"

  def score(self, layer, obs, l, budget_BxK):
    last_BxKxS = obs.total[l].last_BxKxS
    return jnp.broadcast_to(jnp.mean(last_BxKxS, axis=1, keepdims=True), last_BxKxS.shape)
