"""KNorm (Devoto et al., arXiv 2406.11430): keys with a small L2 norm draw the most attention, so
the score is -||k_j|| of the post-RoPE key (fp32), as kvpress's ``KnormPress``. Needs no
attention statistics."""
from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from jaxtok.kvcompress.policy import Policy


@dataclasses.dataclass(frozen=True)
class KNorm(Policy):
  name = "knorm"
  merges = False

  def score(self, layer, obs, l, budget_BxK):
    return -jnp.linalg.norm(layer.k.astype(jnp.float32), axis=-1)
