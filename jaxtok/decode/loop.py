"""The one decode loop (DESIGN.md decision 4): on-device generation from a prefilled cache.

The carry is the documented ``DecodeState``; its body ``decode_body`` samples one token per
row, records it and runs it through ``decode_step``. ``decode_loop`` runs the body in a
``lax.while_loop``; ``jaxtok generate`` streams by jitting the same body once and calling it
per token (flax gemma's ``_sampler_loop`` shares one step the same way). Shapes never change,
so nothing recompiles as the sequence grows.

A ``Compactor`` is the loop's one optional, static hook: it prefills the prompt its own way
(e.g. with an observation window), observes every step's forward (attention statistics) into
the carry's ``aux`` slot, and every ``every`` steps may compact the cache (KV compression
during decoding, per-step selection). Compressed decoding is therefore this same loop and
gets sampling and EOS stops for free.

Every ``generate`` in jaxtok returns a ``Generation``: tokens, lengths and per-method
statistics (speculative decoding: steps and accepted tokens).
"""
from __future__ import annotations

import functools
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Float, Int

from jaxtok.cache import KVCache, init_cache
from jaxtok.config import require
from jaxtok.decode.model import Model
from jaxtok.decode.sampling import Sampling, sample
from jaxtok.decode.step import extend, prefill
from jaxtok.nn.transformer import Output


@runtime_checkable
class Compactor(Protocol):
  """A static hook of the decode loop (a frozen, hashable dataclass).

  every: compact after every ``every`` generated tokens; needs_stats: whether each step's
  forward must return attention statistics (``Output.stats``) for ``observe``.
  ``start`` prefills the prompt into ``cache`` and returns (last logits [B, V], the cache -
  possibly compacted to another capacity -, the initial aux); ``observe`` folds one step's
  forward into aux; ``compact`` returns the compacted cache and aux. All three are traced.
  """
  every: int
  needs_stats: bool

  def start(self, model: Model, cache: KVCache, prompt_BxT: Int[Array, "B T"],
            prompt_len_B: Int[Array, "B"]) -> tuple[Float[Array, "B V"], KVCache, Any]: ...

  def observe(self, aux: Any, out: Output, cache: KVCache) -> Any: ...

  def compact(self, cache: KVCache, aux: Any) -> tuple[KVCache, Any]: ...


def check_compactor(compactor) -> None:
  """Host-side check that ``compactor`` is None or implements the Compactor protocol."""
  if compactor is None:
    return
  if not isinstance(compactor, Compactor):
    raise TypeError(f"compactor: expected a jaxtok.decode.Compactor (every, needs_stats, start, "
                    f"observe, compact), got {type(compactor).__name__}")
  require(isinstance(compactor.every, int) and compactor.every > 0, "compactor.every",
          "a positive int", compactor.every)
  try:
    hash(compactor)
  except TypeError as e:
    raise TypeError(f"compactor: must be hashable (a frozen dataclass): {e}") from None


@struct.dataclass
class DecodeState:
  """Carry of the generation loop (flax gemma's ``_SamplingState``).

  step: i32[] tokens generated so far; cache: the KV cache holding prompt + generated tokens;
  logits_BxV: f32 next-token logits of each row; tokens_BxN: generated tokens, N =
  max_new_tokens (0 after EOS); n_B: tokens generated per row (EOS included); done_B: row has
  emitted EOS; key: PRNG key; aux: the compactor's state (None without one).
  """
  step: Int[Array, ""]
  cache: KVCache
  logits_BxV: Float[Array, "B V"]
  tokens_BxN: Int[Array, "B N"]
  n_B: Int[Array, "B"]
  done_B: Bool[Array, "B"]
  key: jax.Array
  aux: Any = None


@struct.dataclass
class Generation:
  """What every ``generate`` returns: tokens_BxN (N = max_new_tokens, 0 past n_B), n_B tokens
  generated per row (EOS included), and per-method statistics (e.g. speculative decoding's
  ``steps_B`` and ``accepted_B``; empty for plain decoding)."""
  tokens_BxN: Int[Array, "B N"]
  n_B: Int[Array, "B"]
  stats: dict[str, Array] = struct.field(default_factory=dict)

  def rows(self) -> list[list[int]]:
    """Each row's generated tokens on the host, cut at its length."""
    tokens, n = jax.device_get((self.tokens_BxN, self.n_B))
    return [list(map(int, t[:k])) for t, k in zip(tokens, n)]


def initial_state(cache: KVCache, logits_BxV: Float[Array, "B V"], key, *,
                  max_new_tokens: int, aux: Any = None) -> DecodeState:
  """The loop's carry before the first token: a prefilled cache and its rows' last logits."""
  b = logits_BxV.shape[0]
  return DecodeState(step=jnp.int32(0), cache=cache, logits_BxV=logits_BxV,
                     tokens_BxN=jnp.zeros((b, max_new_tokens), jnp.int32),
                     n_B=jnp.zeros((b,), jnp.int32), done_B=jnp.zeros((b,), bool), key=key,
                     aux=aux)


def start(model: Model, prompt_BxT, prompt_len_B, key, *, capacity: int, max_new_tokens: int,
          compactor: Compactor | None = None) -> DecodeState:
  """A fresh cache, the prefilled prompts (through the compactor when given), an empty output
  buffer (traceable)."""
  cache = init_cache(model.cfg, prompt_BxT.shape[0], capacity)
  if compactor is None:
    logits_BxV, cache = prefill(model, cache, prompt_BxT, prompt_len_B)
    aux = None
  else:
    logits_BxV, cache, aux = compactor.start(model, cache, prompt_BxT, prompt_len_B)
  return initial_state(cache, logits_BxV, key, max_new_tokens=max_new_tokens, aux=aux)


def decode_body(model: Model, state: DecodeState, *, sampling: Sampling, eos_id: int | None,
                compactor: Compactor | None = None,
                forced_B: Int[Array, "B"] | None = None) -> DecodeState:
  """Draws one token per row from ``state.logits_BxV`` (or takes ``forced_B``: teacher forcing,
  e.g. scoring a text under a compressed cache), records it, and runs it through the model
  (then the compactor, if any). Rows that are done record 0 (their cache keeps advancing;
  nothing reads it)."""
  key, sub = jax.random.split(state.key)
  token_B = sample(state.logits_BxV, sub, sampling) if forced_B is None else forced_B
  tokens_BxN = state.tokens_BxN.at[:, state.step].set(jnp.where(state.done_B, 0, token_B))
  n_B = state.n_B + (~state.done_B).astype(jnp.int32)
  done_B = state.done_B | (token_B == eos_id) if eos_id is not None else state.done_B
  out, cache = extend(model, state.cache, token_B[:, None], state.cache.next_pos[:, None],
                      commit_B=jnp.ones_like(token_B),
                      return_stats=compactor is not None and compactor.needs_stats)
  aux = state.aux
  if compactor is not None:
    aux = compactor.observe(aux, out, cache)
    cache, aux = jax.lax.cond((state.step + 1) % compactor.every == 0, compactor.compact,
                              lambda c, a: (c, a), cache, aux)
  return DecodeState(step=state.step + 1, cache=cache, logits_BxV=out.logits[:, 0],
                     tokens_BxN=tokens_BxN, n_B=n_B, done_B=done_B, key=key, aux=aux)


def decode_loop(model: Model, state: DecodeState, *, sampling: Sampling, eos_id: int | None,
                compactor: Compactor | None = None) -> DecodeState:
  """``lax.while_loop`` over ``decode_body`` until the output buffer is full or every row is
  done (traceable; any cache whose layers the model can attend, e.g. a selected one)."""
  max_new_tokens = state.tokens_BxN.shape[1]

  def cond(s: DecodeState):
    return (s.step < max_new_tokens) & ~jnp.all(s.done_B)

  body = functools.partial(decode_body, model, sampling=sampling, eos_id=eos_id,
                           compactor=compactor)
  return jax.lax.while_loop(cond, body, state)


@functools.partial(jax.jit, static_argnames=("capacity", "max_new_tokens", "sampling", "eos_id",
                                              "compactor"))
def generate_on_device(model: Model, prompt_BxT, prompt_len_B, key, *, capacity: int,
                       max_new_tokens: int, sampling: Sampling, eos_id: int | None,
                       compactor: Compactor | None = None) -> Generation:
  """Prefill + ``decode_loop`` in one program."""
  state = start(model, prompt_BxT, prompt_len_B, key, capacity=capacity,
                max_new_tokens=max_new_tokens, compactor=compactor)
  state = decode_loop(model, state, sampling=sampling, eos_id=eos_id, compactor=compactor)
  return Generation(tokens_BxN=state.tokens_BxN, n_B=state.n_B)


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


def check_model(model) -> None:
  if not isinstance(model, Model):
    raise TypeError(f"model: expected a jaxtok.decode.Model (models.load, train(...) or "
                    f"Model.from_module), got {type(model).__name__}")


def generate(model: Model, prompt_BxT, prompt_len_B=None, *, max_new_tokens: int,
             sampling: Sampling = Sampling(), key=None, capacity: int | None = None,
             eos_id: int | None = None, compactor: Compactor | None = None) -> Generation:
  """Generates up to ``max_new_tokens`` per row after right-padded prompts (on device).

  ``capacity``: KV slots per (layer, row, kv head) for the prompt and the new tokens (default
  the model's ``max_len``); ``compactor``: compress the cache while decoding (e.g.
  ``jaxtok.kvcompress.compactor``)."""
  check_model(model)
  check_compactor(compactor)
  if not isinstance(sampling, Sampling):
    raise TypeError(f"sampling: expected a jaxtok.decode.Sampling, got {type(sampling).__name__}")
  capacity = capacity or model.cfg.max_len
  prompt_BxT, prompt_len_B = validate_prompts(prompt_BxT, prompt_len_B, model.cfg.vocab_size,
                                              max_new_tokens, capacity)
  key = jax.random.key(0) if key is None else key
  return generate_on_device(model, prompt_BxT, prompt_len_B, key, capacity=capacity,
                            max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id,
                            compactor=compactor)
