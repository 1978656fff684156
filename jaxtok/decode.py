"""Cached autoregressive generation that runs on device (DESIGN.md decision 4).

Prompts are right-padded to a common length with their true lengths given; prefill writes the
block into a fixed-capacity cache, then a ``lax.while_loop`` decodes one token per iteration.
Shapes never change inside the loop, so nothing recompiles as the sequence grows.
Sampling: greedy (temperature 0), temperature, top-k, top-p (nucleus, Holtzman et al. 2019).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Float, Int

from jaxtok.cache import KVCache, init_cache
from jaxtok.config import require
from jaxtok.nn.transformer import forward


@dataclasses.dataclass(frozen=True, kw_only=True)
class Sampling:
  temperature: float = 0.0  # 0: greedy
  top_k: int = 0  # 0: off
  top_p: float = 1.0  # 1: off

  def __post_init__(self):
    require(self.temperature >= 0, "sampling.temperature", ">= 0", self.temperature)
    require(self.top_k >= 0, "sampling.top_k", ">= 0", self.top_k)
    require(0 < self.top_p <= 1, "sampling.top_p", "in (0, 1]", self.top_p)


def sample(logits_BxV: Float[Array, "B V"], key, sampling: Sampling) -> Int[Array, "B"]:
  if sampling.temperature == 0:
    return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  logits = logits_BxV.astype(jnp.float32) / sampling.temperature
  if sampling.top_k:
    kth_B1 = jax.lax.top_k(logits, sampling.top_k)[0][:, -1:]
    logits = jnp.where(logits < kth_B1, -jnp.inf, logits)
  if sampling.top_p < 1:
    sorted_BxV = jnp.sort(logits, axis=-1)[:, ::-1]
    cum_BxV = jnp.cumsum(jax.nn.softmax(sorted_BxV, axis=-1), axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
    n_keep_B1 = jnp.sum(cum_BxV - jax.nn.softmax(sorted_BxV, -1) < sampling.top_p, -1,
                        keepdims=True)
    cutoff_B1 = jnp.take_along_axis(sorted_BxV, n_keep_B1 - 1, axis=-1)
    logits = jnp.where(logits < cutoff_B1, -jnp.inf, logits)
  return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def prefill(graphdef: nnx.GraphDef, params, cache: KVCache, prompt_BxT: Int[Array, "B T"],
            prompt_len_B: Int[Array, "B"]) -> tuple[Float[Array, "B V"], KVCache]:
  """Runs the (right-padded) prompts through the model; returns each prompt's last logits."""
  t = prompt_BxT.shape[1]
  offset_BxT = jnp.arange(t, dtype=jnp.int32)[None, :]
  positions_BxT = jnp.where(offset_BxT < prompt_len_B[:, None],
                            cache.length[:, None] + offset_BxT, -1)
  logits_Bx1xV, cache = forward(graphdef, params, prompt_BxT, positions_BxT, cache=cache,
                                logits_at_BxN=(prompt_len_B - 1)[:, None])
  return logits_Bx1xV[:, 0], cache


def decode_step(graphdef: nnx.GraphDef, params, cache: KVCache, token_B: Int[Array, "B"]
                ) -> tuple[Float[Array, "B V"], KVCache]:
  logits_Bx1xV, cache = forward(graphdef, params, token_B[:, None], cache.length[:, None],
                                cache=cache)
  return logits_Bx1xV[:, 0], cache


@functools.partial(jax.jit, static_argnames=("graphdef", "cfg", "capacity", "max_new_tokens",
                                              "sampling", "eos_id"))
def _generate(graphdef, params, prompt_BxT, prompt_len_B, key, *, cfg, capacity,
              max_new_tokens, sampling, eos_id):
  b = prompt_BxT.shape[0]
  cache = init_cache(cfg, b, capacity)
  logits_BxV, cache = prefill(graphdef, params, cache, prompt_BxT, prompt_len_B)
  out_BxN = jnp.zeros((b, max_new_tokens), jnp.int32)
  done_B = jnp.zeros((b,), bool)
  n_B = jnp.zeros((b,), jnp.int32)

  def cond(state):
    i, _, _, _, done_B, _, _ = state
    return (i < max_new_tokens) & ~jnp.all(done_B)

  def body(state):
    i, cache, logits_BxV, out_BxN, done_B, n_B, key = state
    key, sub = jax.random.split(key)
    token_B = sample(logits_BxV, sub, sampling)
    out_BxN = out_BxN.at[:, i].set(jnp.where(done_B, 0, token_B))
    n_B = n_B + (~done_B).astype(jnp.int32)
    if eos_id is not None:
      done_B = done_B | (token_B == eos_id)
    logits_BxV, cache = decode_step(graphdef, params, cache, token_B)
    return i + 1, cache, logits_BxV, out_BxN, done_B, n_B, key

  state = (jnp.int32(0), cache, logits_BxV, out_BxN, done_B, n_B, key)
  _, cache, _, out_BxN, _, n_B, _ = jax.lax.while_loop(cond, body, state)
  return out_BxN, n_B


def generate(graphdef: nnx.GraphDef, params, prompt_BxT, prompt_len_B=None, *,
             max_new_tokens: int, sampling: Sampling = Sampling(), key=None,
             capacity: int | None = None, eos_id: int | None = None):
  """Returns (new tokens [B, max_new_tokens] zero-padded after EOS, count generated [B])."""
  cfg = nnx.merge(graphdef, params).cfg
  prompt_BxT = jnp.asarray(prompt_BxT, jnp.int32)
  if prompt_BxT.ndim != 2 or prompt_BxT.shape[1] == 0:
    raise ValueError(f"prompt_BxT: expected a non-empty [batch, length] array, got shape "
                     f"{prompt_BxT.shape}")
  b, t = prompt_BxT.shape
  prompt_len_B = (jnp.full((b,), t, jnp.int32) if prompt_len_B is None
                  else jnp.asarray(prompt_len_B, jnp.int32))
  capacity = capacity or cfg.max_len
  require(max_new_tokens > 0, "max_new_tokens", "> 0", max_new_tokens)
  if t + max_new_tokens > capacity:
    raise ValueError(f"prompt length {t} + max_new_tokens {max_new_tokens} exceeds the KV-cache "
                     f"capacity {capacity}; shorten the prompt or raise capacity")
  if int(jnp.min(prompt_len_B)) < 1 or int(jnp.max(prompt_len_B)) > t:
    raise ValueError(f"prompt_len_B: expected values in [1, {t}], got {prompt_len_B}")
  if int(jnp.max(prompt_BxT)) >= cfg.vocab_size or int(jnp.min(prompt_BxT)) < 0:
    raise ValueError(f"prompt_BxT: token ids must be in [0, {cfg.vocab_size}), got range "
                     f"[{int(jnp.min(prompt_BxT))}, {int(jnp.max(prompt_BxT))}]")
  key = jax.random.key(0) if key is None else key
  return _generate(graphdef, params, prompt_BxT, prompt_len_B, key, cfg=cfg, capacity=capacity,
                   max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id)
