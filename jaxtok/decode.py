"""Cached autoregressive generation that runs on device (DESIGN.md decision 4) - the one driver.

Prompts are right-padded to a common length with their true lengths given; ``prefill`` writes
the block into a fixed-capacity cache and commits each row's true length; ``decode_step`` feeds
one token per row at ``cache.next_pos`` and commits it. The generation loop's carry is the
documented ``DecodeState`` and its body ``decode_body``: ``generate`` runs it inside a
``lax.while_loop``; ``jaxtok generate`` streams by jitting the same body once and calling it per
token; the benchmarks time ``generate``. Shapes never change, so nothing recompiles as the
sequence grows.

Sampling: ``warp`` turns logits into the distribution that is drawn from (temperature, top-k,
top-p / nucleus, Holtzman et al. 2019) - lossless speculative acceptance needs exactly this
distribution - and ``sample`` draws from it (argmax at temperature 0).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Bool, Float, Int

from jaxtok import cache as cache_lib
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


def prefill(graphdef: nnx.GraphDef, params, cache: KVCache, prompt_BxT: Int[Array, "B T"],
            prompt_len_B: Int[Array, "B"], *, fresh: bool = True
            ) -> tuple[Float[Array, "B V"], KVCache]:
  """Runs the (right-padded) prompts at positions ``next_pos + 0..len-1`` and commits each row's
  true length; returns each prompt's last logits. ``fresh`` (static): the cache comes from
  init_cache (the block attends to itself alone); False continues a cache (chunked prefill)."""
  t = prompt_BxT.shape[1]
  offset_BxT = jnp.arange(t, dtype=jnp.int32)[None, :]
  positions_BxT = jnp.where(offset_BxT < prompt_len_B[:, None],
                            cache.next_pos[:, None] + offset_BxT, -1)
  out = forward(graphdef, params, prompt_BxT, positions_BxT, cache=cache, fresh_cache=fresh,
                logits_at_BxN=(prompt_len_B - 1)[:, None])
  return out.logits[:, 0], cache_lib.commit(out.cache, prompt_len_B)


def decode_step(graphdef: nnx.GraphDef, params, cache: KVCache, token_B: Int[Array, "B"]
                ) -> tuple[Float[Array, "B V"], KVCache]:
  """One token per row at position ``next_pos``, committed; returns its next-token logits."""
  out = forward(graphdef, params, token_B[:, None], cache.next_pos[:, None], cache=cache)
  return out.logits[:, 0], cache_lib.commit(out.cache, jnp.ones_like(token_B))


@struct.dataclass
class DecodeState:
  """Carry of the generation loop (flax gemma's ``_SamplingState``).

  step: i32[] tokens generated so far; cache: the KV cache holding prompt + generated tokens;
  logits_BxV: f32 next-token logits of each row; tokens_BxN: generated tokens (0 after EOS);
  n_B: tokens generated per row (EOS included); done_B: row has emitted EOS; key: PRNG key.
  """
  step: Int[Array, ""]
  cache: KVCache
  logits_BxV: Float[Array, "B V"]
  tokens_BxN: Int[Array, "B N"]
  n_B: Int[Array, "B"]
  done_B: Bool[Array, "B"]
  key: jax.Array


def initial_state(cache: KVCache, logits_BxV: Float[Array, "B V"], key, *,
                  max_new_tokens: int) -> DecodeState:
  """The loop's carry before the first token: a prefilled cache and its rows' last logits."""
  b = logits_BxV.shape[0]
  return DecodeState(step=jnp.int32(0), cache=cache, logits_BxV=logits_BxV,
                     tokens_BxN=jnp.zeros((b, max_new_tokens), jnp.int32),
                     n_B=jnp.zeros((b,), jnp.int32), done_B=jnp.zeros((b,), bool), key=key)


def start(graphdef: nnx.GraphDef, params, prompt_BxT, prompt_len_B, key, *, capacity: int,
          max_new_tokens: int) -> DecodeState:
  """A fresh cache, the prefilled prompts, an empty output buffer (traceable)."""
  cfg = nnx.merge(graphdef, params).cfg
  logits_BxV, cache = prefill(graphdef, params, init_cache(cfg, prompt_BxT.shape[0], capacity),
                              prompt_BxT, prompt_len_B)
  return initial_state(cache, logits_BxV, key, max_new_tokens=max_new_tokens)


def decode_body(graphdef: nnx.GraphDef, params, state: DecodeState, *, sampling: Sampling,
                eos_id: int | None) -> DecodeState:
  """Draws one token per row from ``state.logits_BxV``, records it, and runs it through the
  model. Rows that are done record 0 (their cache keeps advancing; nothing reads it)."""
  key, sub = jax.random.split(state.key)
  token_B = sample(state.logits_BxV, sub, sampling)
  tokens_BxN = state.tokens_BxN.at[:, state.step].set(jnp.where(state.done_B, 0, token_B))
  n_B = state.n_B + (~state.done_B).astype(jnp.int32)
  done_B = state.done_B | (token_B == eos_id) if eos_id is not None else state.done_B
  logits_BxV, cache = decode_step(graphdef, params, state.cache, token_B)
  return DecodeState(step=state.step + 1, cache=cache, logits_BxV=logits_BxV,
                     tokens_BxN=tokens_BxN, n_B=n_B, done_B=done_B, key=key)


def decode_loop(graphdef: nnx.GraphDef, params, state: DecodeState, *, sampling: Sampling,
                eos_id: int | None) -> DecodeState:
  """``lax.while_loop`` over ``decode_body`` until the output buffer is full or every row is
  done (traceable; any cache whose layers the model can attend, e.g. a selected one)."""
  max_new_tokens = state.tokens_BxN.shape[1]

  def cond(s: DecodeState):
    return (s.step < max_new_tokens) & ~jnp.all(s.done_B)

  body = functools.partial(decode_body, graphdef, params, sampling=sampling, eos_id=eos_id)
  return jax.lax.while_loop(cond, body, state)


@functools.partial(jax.jit, static_argnames=("graphdef", "capacity", "max_new_tokens",
                                              "sampling", "eos_id"))
def generate_on_device(graphdef, params, prompt_BxT, prompt_len_B, key, *, capacity,
                       max_new_tokens, sampling, eos_id):
  """Prefill + ``decode_loop``; returns (tokens_BxN, n_B)."""
  state = start(graphdef, params, prompt_BxT, prompt_len_B, key, capacity=capacity,
                max_new_tokens=max_new_tokens)
  state = decode_loop(graphdef, params, state, sampling=sampling, eos_id=eos_id)
  return state.tokens_BxN, state.n_B


def validate_prompts(prompt_BxT, prompt_len_B, vocab_size: int, max_new_tokens: int,
                     capacity: int):
  """Host-side checks of a generation request; returns the int32 prompt and lengths."""
  prompt_BxT = jnp.asarray(prompt_BxT, jnp.int32)
  if prompt_BxT.ndim != 2 or prompt_BxT.shape[1] == 0:
    raise ValueError(f"prompt_BxT: expected a non-empty [batch, length] array, got shape "
                     f"{prompt_BxT.shape}")
  b, t = prompt_BxT.shape
  prompt_len_B = (jnp.full((b,), t, jnp.int32) if prompt_len_B is None
                  else jnp.asarray(prompt_len_B, jnp.int32))
  require(max_new_tokens > 0, "max_new_tokens", "> 0", max_new_tokens)
  if t + max_new_tokens > capacity:
    raise ValueError(f"prompt length {t} + max_new_tokens {max_new_tokens} exceeds the KV-cache "
                     f"capacity {capacity}; shorten the prompt or raise capacity")
  if prompt_len_B.shape != (b,) or int(jnp.min(prompt_len_B)) < 1 or int(
      jnp.max(prompt_len_B)) > t:
    raise ValueError(f"prompt_len_B: expected [{b}] values in [1, {t}], got {prompt_len_B}")
  if int(jnp.max(prompt_BxT)) >= vocab_size or int(jnp.min(prompt_BxT)) < 0:
    raise ValueError(f"prompt_BxT: token ids must be in [0, {vocab_size}), got range "
                     f"[{int(jnp.min(prompt_BxT))}, {int(jnp.max(prompt_BxT))}]")
  return prompt_BxT, prompt_len_B


def generate(graphdef: nnx.GraphDef, params, prompt_BxT, prompt_len_B=None, *,
             max_new_tokens: int, sampling: Sampling = Sampling(), key=None,
             capacity: int | None = None, eos_id: int | None = None):
  """Returns (new tokens [B, max_new_tokens] zero-padded after EOS, count generated [B])."""
  cfg = nnx.merge(graphdef, params).cfg
  capacity = capacity or cfg.max_len
  prompt_BxT, prompt_len_B = validate_prompts(prompt_BxT, prompt_len_B, cfg.vocab_size,
                                              max_new_tokens, capacity)
  key = jax.random.key(0) if key is None else key
  return generate_on_device(graphdef, params, prompt_BxT, prompt_len_B, key, capacity=capacity,
                            max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id)
