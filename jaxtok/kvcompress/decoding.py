"""Compressed decoding and scoring on the one decode loop (``jaxtok.decode``) with a
``KVCompactor`` (``compactor.py`` holds the method: observation, budgets, what a decode-time
score reads).

``generate`` is ``jaxtok.decode.generate`` with the compactor: sampling, EOS and a
``Generation`` come from the engine. ``score`` is the teacher-forced mean NLL under a budget
(Elastic Cache's perplexity protocol, arXiv 2407.18121 §4): the engine's own ``decode_body``
with the text's tokens forced, so reading and generating compact through the same step.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from jaxtok import decode
from jaxtok.config import require
from jaxtok.decode import Generation, Model, Sampling
from jaxtok.kvcompress.compactor import KVCompactor
from jaxtok.kvcompress.policy import Policy


def generate(model: Model, prompt_BxT, *, policy: Policy, budget_tokens: int,
             max_new_tokens: int, every: int = 1, window: int | None = None,
             sampling: Sampling = Sampling(), key=None, eos_id: int | None = None
             ) -> Generation:
  """Generation under a fixed KV budget per (layer, kv head) from full-length prompts.
  Returns the engine's ``Generation``, its stats holding ``capacity`` (slots per head held
  while decoding). ``window``: the prompt's observation window (``KVCompactor``)."""
  decode.check_model(model)
  comp = KVCompactor(policy=policy, budget_tokens=budget_tokens, every=every, window=window)
  prompt_BxT = jnp.asarray(prompt_BxT, jnp.int32)
  require(prompt_BxT.ndim == 2, "prompt_BxT", "a [batch, length] array", prompt_BxT.shape)
  gen = decode.generate(model, prompt_BxT, max_new_tokens=max_new_tokens, sampling=sampling,
                        key=key, eos_id=eos_id, compactor=comp,
                        capacity=prompt_BxT.shape[1] + max_new_tokens)
  return gen.replace(stats={**gen.stats, "capacity": jnp.int32(comp.capacity(
      model.cfg.kv_heads))})


@functools.partial(jax.jit, static_argnames=("prompt_len", "compactor"))
def _nll_sum(model: Model, tokens_BxT, *, prompt_len: int, compactor: KVCompactor):
  b, t = tokens_BxT.shape
  state = decode.start(model, tokens_BxT[:, :prompt_len], jnp.full((b,), prompt_len, jnp.int32),
                       jax.random.key(0), capacity=t, max_new_tokens=t - prompt_len,
                       compactor=compactor)

  def step(state, forced_B):
    logp_BxV = jax.nn.log_softmax(state.logits_BxV, -1)
    nll_B = -jnp.take_along_axis(logp_BxV, forced_B[:, None], 1)[:, 0]
    state = decode.decode_body(model, state, sampling=Sampling(), eos_id=None,
                               compactor=compactor, forced_B=forced_B)
    return state, nll_B

  _, nll_NxB = jax.lax.scan(step, state, tokens_BxT[:, prompt_len:].T)
  return jnp.sum(nll_NxB)


def score(model: Model, tokens_BxT, prompt_len: int, *, policy: Policy, budget_tokens: int,
          every: int = 1, window: int | None = None) -> float:
  """Teacher-forced mean NLL of ``tokens[:, prompt_len:]`` with the cache held at the budget
  while they are read: the prompt is compressed once, then every ``every`` tokens."""
  decode.check_model(model)
  tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
  b, t = tokens_BxT.shape
  n = t - prompt_len
  comp = KVCompactor(policy=policy, budget_tokens=budget_tokens, every=every, window=window)
  require(0 < prompt_len < t, "prompt_len", f"in (0, {t})", prompt_len)
  require(n % every == 0, "every", f"a divisor of the scored length {n}", every)
  vocab = model.cfg.vocab_size
  require(int(tokens_BxT.min()) >= 0 and int(tokens_BxT.max()) < vocab, "tokens_BxT",
          f"token ids in [0, {vocab})", (int(tokens_BxT.min()), int(tokens_BxT.max())))
  return float(_nll_sum(model, tokens_BxT, prompt_len=prompt_len, compactor=comp)) / (b * n)


# ---- reading a compressed cache (kvpress's protocols) -----------------------------------------

@jax.jit
def ask(model: Model, cache, question_BxQ):
  """The question after a (compressed) context, kvpress's query-agnostic protocol: a prefill
  that continues the cache. Returns (last logits [B, V], cache)."""
  b, q = question_BxQ.shape
  return decode.prefill(model, cache, question_BxQ, jnp.full((b,), q, jnp.int32), fresh=False)


@functools.partial(jax.jit, static_argnames=("n",))
def continue_greedy(model: Model, cache, logits_BxV, *, n: int):
  """``n`` greedy tokens [B, n] after a prefilled (compressed) cache and its last logits."""
  state = decode.initial_state(cache, logits_BxV, jax.random.key(0), max_new_tokens=n)
  return decode.decode_loop(model, state, sampling=Sampling(), eos_id=None).tokens_BxN


@jax.jit
def continuation_nll(model: Model, cache, logits_BxV, rest_BxH):
  """Mean NLL of the H tokens ``rest`` after a (compressed) cache: the first from ``logits``,
  the others teacher-forced in one block (the cache is read, not compressed further)."""
  h = rest_BxH.shape[1]
  pos = cache.next_pos[:, None] + jnp.arange(h - 1)[None]
  out, _ = decode.extend(model, cache, rest_BxH[:, :-1], pos)
  logp = jax.nn.log_softmax(jnp.concatenate([logits_BxV[:, None], out.logits], axis=1), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, rest_BxH[..., None], axis=-1))
