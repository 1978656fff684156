"""Sampling: ``warp`` turns logits into the distribution that is drawn from (temperature,
top-k, top-p / nucleus, Holtzman et al. 2019, arXiv 1904.09751) - lossless speculative
acceptance needs exactly this distribution - and ``sample`` draws from it (argmax at
temperature 0)."""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, Int

from jaxtok.config import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampling:
  temperature: float = 0.0  # 0: greedy
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1: off

  def __post_init__(self):
    require(self.temperature >= 0, "sampling.temperature", ">= 0", self.temperature)
    require(self.top_k >= 0, "sampling.top_k", ">= 0", self.top_k)
    require(0 < self.top_p <= 1, "sampling.top_p", "in (0, 1]", self.top_p)

  @property
  def greedy(self) -> bool:
    return self.temperature == 0


def warp(logits_BxV: Float[Array, "B V"], sampling: Sampling) -> Float[Array, "B V"]:
  """fp32 logits of the distribution ``sample`` draws from: divided by the temperature, with the
  tokens outside top-k / top-p set to -inf. Greedy decoding has no distribution: raises."""
  if sampling.greedy:
    raise ValueError("warp: sampling.temperature is 0 (greedy); there is no distribution to warp")
  logits = logits_BxV.astype(jnp.float32) / sampling.temperature
  if sampling.top_k:
    kth_B1 = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth_B1, -jnp.inf, logits)
  if sampling.top_p < 1:
    sorted_BxV = jnp.sort(logits, axis=-1)[:, ::-1]
    p_sorted_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
    n_keep_B1 = jnp.sum(jnp.cumsum(p_sorted_BxV, axis=-1) - p_sorted_BxV < sampling.top_p, -1,
                        keepdims=True)
    cutoff_B1 = jnp.take_along_axis(sorted_BxV, n_keep_B1 - 1, axis=-1)
    logits = jnp.where(logits < cutoff_B1, -jnp.inf, logits)
  return logits


def sample(logits_BxV: Float[Array, "B V"], key, sampling: Sampling) -> Int[Array, "B"]:
  if sampling.greedy:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  return jax.random.categorical(key, warp(logits_BxV, sampling), axis=-1).astype(jnp.int32)
