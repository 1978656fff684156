"""Compression while generating: a fixed budget kept as the sequence grows.

The cache holds ``budget + every`` slots per (layer, row, kv head): the prompt is observed and
compressed to the budget once (the policy's prefill ``plan``), then every ``every`` generated
tokens the policy's ``decode_plan`` compacts the cache back to the budget, freeing the slots the
new tokens used (memory stays O(budget), never O(sequence)). H2O's accumulated attention is
carried with the cache (summed into a slot's destination when it moves or merges); TOVA reads
the newest query's attention; StreamingLLM keeps sinks + recent; Elastic Cache evicts at its
fixed offset. Each chunk of ``every`` steps is one jitted function (a ``lax.scan`` of decode
steps, then the compression), so shapes never change and nothing recompiles.

``every = 1`` is the papers' rule (evict one token per step, H2O §3 / TOVA §3); larger values
amortise the compaction (kvpress's ``DecodingPress`` compresses every N steps).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxtok import cache as cache_lib
from jaxtok.cache import init_cache
from jaxtok.config import require
from jaxtok.kvcompress.apply import compress, resize, resize_slots
from jaxtok.kvcompress.base import Observation, Policy, observe, uniform
from jaxtok.nn.attention import AttnStats
from jaxtok.nn.transformer import forward


@functools.partial(jax.jit, static_argnames=("graphdef", "window", "capacity"))
def _prefill(graphdef, params, tokens_BxT, *, window, capacity):
  cfg = nnx.merge(graphdef, params).cfg
  return observe(graphdef, params, init_cache(cfg, tokens_BxT.shape[0], capacity), tokens_BxT,
                 window)


@functools.partial(jax.jit, static_argnames=("policy", "budget", "capacity"))
def _first_compress(cache, obs, *, policy, budget, capacity):
  res = compress(cache, policy, budget, obs, extra=tuple((t.sum_BxKxS,) for t in obs.total))
  acc = tuple(resize_slots(e[0], capacity) for e in res.extra)
  mass = tuple(resize_slots(m, capacity) for m in res.mass)
  return resize(res.cache, capacity), acc, mass, res.kept_fraction


@functools.partial(jax.jit, static_argnames=("graphdef", "policy", "budget", "every"))
def _chunk(graphdef, params, cache, acc, mass, logits_BxV, forced_BxN=None, *, policy, budget,
           every):
  """``every`` decode steps with statistics (greedy, or teacher-forced on ``forced``), then
  compaction back to the budget. Also returns the NLL of the forced tokens."""
  def step(carry, forced_B):
    cache, acc, logits_BxV, _ = carry
    token_B = (jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32) if forced_B is None
               else forced_B)
    nll_B = -jnp.take_along_axis(jax.nn.log_softmax(logits_BxV, -1), token_B[:, None], 1)[:, 0]
    out = forward(graphdef, params, token_B[:, None], cache.next_pos[:, None], cache=cache,
                  return_stats=True)
    cache = cache_lib.commit(out.cache, jnp.ones_like(token_B))
    acc = tuple(a + s.sum_BxKxS for a, s in zip(acc, out.stats))
    return (cache, acc, out.logits[:, 0], out.stats), (token_B, nll_B)

  b, kh, s = cache.layers[0].pos.shape
  zeros = tuple(AttnStats(jnp.zeros((b, kh, s)), jnp.zeros((b, kh, s))) for _ in cache.layers)
  xs = None if forced_BxN is None else forced_BxN.T
  (cache, acc, logits_BxV, stats), (tokens_NxB, nll_NxB) = jax.lax.scan(
      step, (cache, acc, logits_BxV, zeros), xs, length=every)
  mass = tuple(jnp.where(jnp.arange(s) < l.length[..., None], jnp.maximum(m, 1.0), 0.0)
               for m, l in zip(mass, cache.layers))
  obs = Observation(total=tuple(AttnStats(a, st.last_BxKxS) for a, st in zip(acc, stats)),
                    window=stats, tokens_BxS=None, next_pos_B=cache.next_pos, window_size=1)
  res = compress(cache, policy, budget, obs, mass=mass, extra=tuple((a,) for a in acc),
                 decoding=True)
  return res.cache, tuple(e[0] for e in res.extra), res.mass, logits_BxV, tokens_NxB.T, nll_NxB.T


def generate(graphdef, params, prompt_BxT, *, policy: Policy, budget_tokens: int,
             max_new_tokens: int, every: int = 1, window: int = 1):
  """Greedy generation under a fixed KV budget per (layer, kv head).

  Returns (tokens i32[B, max_new_tokens], info) with info = {"capacity": slots per head held
  while decoding, "prefill_kept_fraction", "cache": the final cache}. ``window``: observation
  window of the prompt (SnapKV-style policies need it below the budget).
  """
  cfg = nnx.merge(graphdef, params).cfg
  prompt_BxT = jnp.asarray(prompt_BxT, jnp.int32)
  b, t = prompt_BxT.shape
  require(budget_tokens > 0, "budget_tokens", "> 0", budget_tokens)
  require(every > 0, "every", "> 0", every)
  require(max_new_tokens > 0, "max_new_tokens", "> 0", max_new_tokens)
  require(int(prompt_BxT.max()) < cfg.vocab_size and int(prompt_BxT.min()) >= 0, "prompt_BxT",
          f"token ids in [0, {cfg.vocab_size})", (int(prompt_BxT.min()), int(prompt_BxT.max())))
  capacity = max(budget_tokens, t) + every
  budget = uniform(cfg.n_layers, cfg.kv_heads, min(budget_tokens, t))
  logits_BxV, cache, obs = _prefill(graphdef, params, prompt_BxT, window=window, capacity=t)
  cache, acc, mass, kept = _first_compress(cache, obs, policy=policy, budget=budget,
                                           capacity=capacity)
  budget = uniform(cfg.n_layers, cfg.kv_heads, budget_tokens)
  out = []
  for _ in range(-(-max_new_tokens // every)):
    cache, acc, mass, logits_BxV, toks_BxN, _ = _chunk(graphdef, params, cache, acc, mass,
                                                       logits_BxV, policy=policy,
                                                       budget=budget, every=every)
    out.append(toks_BxN)  # stays on device: no host sync between chunks
  tokens = np.asarray(jnp.concatenate(out, axis=1))[:, :max_new_tokens]
  return tokens, {"capacity": capacity, "prefill_kept_fraction": float(kept), "cache": cache}


def score(graphdef, params, tokens_BxT, prompt_len: int, *, policy: Policy, budget_tokens: int,
          every: int = 1, window: int = 1) -> float:
  """Teacher-forced mean NLL of ``tokens[:, prompt_len:]`` with the cache held at the budget
  while they are read (Elastic Cache's perplexity protocol, arXiv 2407.18121 §4): the prompt
  is compressed once, then every ``every`` tokens."""
  cfg = nnx.merge(graphdef, params).cfg
  tokens_BxT = jnp.asarray(tokens_BxT, jnp.int32)
  b, t = tokens_BxT.shape
  n = t - prompt_len
  require(0 < prompt_len < t, "prompt_len", f"in (0, {t})", prompt_len)
  require(n % every == 0, "every", f"a divisor of the scored length {n}", every)
  require(budget_tokens > 0, "budget_tokens", "> 0", budget_tokens)
  capacity = max(budget_tokens, prompt_len) + every
  budget = uniform(cfg.n_layers, cfg.kv_heads, min(budget_tokens, prompt_len))
  logits_BxV, cache, obs = _prefill(graphdef, params, tokens_BxT[:, :prompt_len], window=window,
                                    capacity=prompt_len)
  cache, acc, mass, _ = _first_compress(cache, obs, policy=policy, budget=budget,
                                        capacity=capacity)
  budget = uniform(cfg.n_layers, cfg.kv_heads, budget_tokens)
  total = jnp.float32(0.0)  # summed on device: no host sync between chunks
  for c in range(n // every):
    forced = tokens_BxT[:, prompt_len + c * every:prompt_len + (c + 1) * every]
    cache, acc, mass, logits_BxV, _, nll_BxN = _chunk(graphdef, params, cache, acc, mass,
                                                      logits_BxV, forced, policy=policy,
                                                      budget=budget, every=every)
    total += jnp.sum(nll_BxN)
  return float(total) / (b * n)
