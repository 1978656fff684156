"""StreamingLLM (Xiao et al., arXiv 2309.17453): attention sinks plus a recent window.

Keeps the first ``sinks`` tokens (the "attention sinks" of §3.1) and the most recent
``budget - sinks`` ones; everything between is dropped. The score is the position (recency)
with the sinks protected, so the shared top-k gives exactly sinks + window for any budget. The
kept keys keep their true RoPE rotation (as kvpress; the paper re-assigns positions inside the
cache - ``jaxtok.kvcompress.pie.rerotate`` does that if wanted).
"""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxtok.config import require
from jaxtok.kvcompress.policy import PROTECT, Policy


@dataclasses.dataclass(frozen=True)
class StreamingLLM(Policy):
  name = "streaming_llm"
  merges = False
  sinks: int = 4

  def __post_init__(self):
    require(self.sinks >= 0, "sinks", ">= 0", self.sinks)

  def allocate(self, budget, obs):
    require(budget.min() > self.sinks, "budget", f"more tokens than the {self.sinks} sinks",
            budget.min())
    return budget

  def score(self, layer, obs, l, budget_BxK):
    pos = layer.pos.astype(jnp.float32)
    return jnp.where((layer.pos >= 0) & (layer.pos < self.sinks), PROTECT, pos)
