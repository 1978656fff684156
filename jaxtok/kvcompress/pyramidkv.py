"""PyramidKV (Cai et al., arXiv 2406.02069): SnapKV's scores with budgets that decrease
linearly with depth (§3.2: lower layers spread attention widely, upper layers focus), beta = 20
as the reference code. When a layer's share cannot exceed the window the schedule falls back to
SnapKV's uniform budget and ``Budget.fallback`` says so (kvpress does this silently)."""
from __future__ import annotations

import dataclasses

from jaxtok.config import require
from jaxtok.kvcompress.budget import pyramid
from jaxtok.kvcompress.snapkv import SnapKV


@dataclasses.dataclass(frozen=True)
class PyramidKV(SnapKV):
  name = "pyramidkv"
  beta: float = 20.0

  def allocate(self, budget, obs):
    a = budget.array
    if obs.prompt_len and a.min() >= obs.prompt_len:
      return budget  # nothing to compress: a pyramid would only take tokens from deep layers
    mean = int(round(a.mean()))
    sched = pyramid(a.shape[0], a.shape[1], mean, obs.window_size, self.beta)
    if sched.fallback:
      require(budget.min() > obs.window_size, "budget",
              f"more tokens than the observation window ({obs.window_size})", budget.min())
    return sched
