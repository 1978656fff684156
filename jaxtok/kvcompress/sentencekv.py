"""SentenceKV (Zhu et al., arXiv 2504.00970, COLM 2025; zzbright1998/SentenceKV).

Sentence-level semantic keys: the prompt is cut into sentences at boundary tokens (for code a
sentence is a line: the newline tokens); each (head, sentence) is represented by the mean of its
keys mu_{h,s}, and sentences are ranked per head by their relevance to the current queries,
mu_{h,s} . q_bar_h, and taken whole in rank order until the budget, besides ``sinks`` and the
observation window (§3.2-3.3).

Our choices: the queries are not returned by the forward, so the relevance of a sentence is
the mean over its tokens of the log attention mass the observation window gave them, which
equals q_bar . mu_s / sqrt(Dh) up to a per-head constant for one query (log a[t, j] =
q_t.k_j / sqrt(Dh) - lse_t is linear in k_j); for several queries and heads it is the log of a
sum, an approximation. Selection is done once at prefill (the released code re-selects per
decode step with masks that free no memory; our compressed cache is really smaller).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp

from jaxtok_kernels.selected_attention import from_indices

from jaxtok import cache as cache_lib
from jaxtok import decode
from jaxtok.cache import init_cache
from jaxtok.config import require
from jaxtok.decode import Generation, Model
from jaxtok.kvcompress.apply import budget_arrays
from jaxtok.kvcompress.budget import uniform
from jaxtok.kvcompress.observe import observe
from jaxtok.kvcompress.policy import PROTECT, Policy, recent_mask, valid_slots


def sentence_ids(tokens_BxS, boundary_ids):
  """Sentence index of each slot; a boundary token ends (belongs to) its sentence."""
  is_b = jnp.isin(tokens_BxS, jnp.asarray(boundary_ids, jnp.int32)).astype(jnp.int32)
  return jnp.cumsum(is_b, axis=-1) - is_b


@dataclasses.dataclass(frozen=True)
class SentenceKV(Policy):
  name = "sentencekv"
  needs_window = True
  boundary_ids: tuple[int, ...] = ()
  sinks: int = 4
  vocab_size: int | None = None  # if given, boundary ids are checked against it

  def __post_init__(self):
    require(len(self.boundary_ids) > 0, "boundary_ids", "at least one sentence-boundary token id",
            self.boundary_ids)
    hi = self.vocab_size if self.vocab_size is not None else 2**31 - 1
    require(all(0 <= i < hi for i in self.boundary_ids), "boundary_ids",
            f"token ids in [0, {hi})", self.boundary_ids)
    require(self.sinks >= 0, "sinks", ">= 0", self.sinks)

  def score(self, layer, obs, l, budget_BxK):
    if obs.tokens_BxS is None or obs.window is None:
      raise ValueError("sentencekv: the observation needs tokens_BxS and window statistics")
    b, k, s = layer.pos.shape
    valid = valid_slots(layer)
    tok_BxKxS = jnp.take_along_axis(obs.tokens_BxS[:, None, :],
                                    jnp.clip(layer.pos, 0, obs.tokens_BxS.shape[1] - 1), axis=2)
    sid_BxKxS = jnp.where(valid, sentence_ids(tok_BxKxS, self.boundary_ids), s)
    rel = jnp.where(valid, jnp.log(obs.window[l].sum_BxKxS + 1e-9), 0.0)
    seg = lambda x, i: jax.ops.segment_sum(x, i, num_segments=s + 1)
    tot = jax.vmap(jax.vmap(seg))(rel, sid_BxKxS)
    cnt = jax.vmap(jax.vmap(seg))(valid.astype(jnp.float32), sid_BxKxS)
    sent_score = tot / jnp.maximum(cnt, 1.0)
    score = jnp.take_along_axis(sent_score, sid_BxKxS, axis=2)
    protect = ((layer.pos >= 0) & (layer.pos < self.sinks)) | recent_mask(layer, obs.window_size)
    return jnp.where(protect, PROTECT, score)


# ---- decoding with selected attention (§3.3) -------------------------------------------------
# The full prompt cache is kept (the paper's offloaded token KV) and every (layer, row, kv head)
# attends only to its selected slots - sinks + observation window + the sentences it ranked
# highest, up to the budget - plus every generated token: ``jaxtok.cache.select`` makes the
# layers ``SelectedLayerKV``, which the model reads through jaxtok_kernels.selected_attention
# (on TPU/GPU a kernel that visits only the cache blocks holding a selected slot), and the
# plain decode loop runs over it. Our choice: the selection is made once, from the prompt's
# window queries (the forward does not return per-layer decode queries, so the paper's per-step
# q_bar ranking is not re-run); decoding over the selection then equals decoding over the cache
# compressed to it (tests/kvcompress/test_sentencekv_kernel.py).

def selections(cache, obs, policy: SentenceKV, budget_tokens: int):
  """Per layer bool[B, K, S]: the slots the policy's plan keeps at ``budget_tokens`` per head."""
  n_layers, kh = len(cache.layers), cache.layers[0].length.shape[1]
  budget = policy.allocate(uniform(n_layers, kh, budget_tokens), obs)
  out = []
  for l, (layer, b_BxK) in enumerate(zip(cache.layers, budget_arrays(budget, cache.batch))):
    plan = policy.plan(layer, obs, l, b_BxK)
    out.append(from_indices(plan.keep_BxKxS, plan.n_keep_BxK, layer.capacity))
  return tuple(out)


@functools.partial(jax.jit, static_argnames=("policy", "budget_tokens", "window",
                                             "max_new_tokens"))
def decode_selected(model: Model, tokens_BxT, *, policy, budget_tokens, window,
                    max_new_tokens) -> tuple[decode.DecodeState, tuple]:
  """The jitted core of ``generate`` (no input checks): the final loop state (logits, the
  selected cache) and the per-layer selections."""
  capacity = tokens_BxT.shape[1] + max_new_tokens
  logits_BxV, cache, obs = observe(model, init_cache(model.cfg, tokens_BxT.shape[0], capacity),
                                   tokens_BxT, window)
  selected = selections(cache, obs, policy, budget_tokens)
  state = decode.initial_state(cache_lib.select(cache, selected), logits_BxV, jax.random.key(0),
                               max_new_tokens=max_new_tokens)
  state = decode.decode_loop(model, state, sampling=decode.Sampling(), eos_id=None)
  return state, selected


def generate(model: Model, prompt_BxT, *, policy: SentenceKV, budget_tokens: int,
             max_new_tokens: int, window: int = 32) -> Generation:
  """Greedy decoding over the full prompt cache with selected attention (the model's
  ``attention_impl`` picks the kernel). Returns the ``Generation``, its stats holding
  ``selected_fraction``: attended prompt slots / prompt slots (``decode_selected`` gives the
  final logits and selected cache)."""
  decode.check_model(model)
  cfg = model.cfg
  prompt_BxT = jnp.asarray(prompt_BxT, jnp.int32)
  t = prompt_BxT.shape[1]
  require(0 < budget_tokens <= t, "budget_tokens", f"in (0, prompt length {t}]", budget_tokens)
  require(max_new_tokens > 0, "max_new_tokens", "> 0", max_new_tokens)
  require(int(prompt_BxT.min()) >= 0 and int(prompt_BxT.max()) < cfg.vocab_size, "prompt_BxT",
          f"token ids in [0, {cfg.vocab_size})", (int(prompt_BxT.min()), int(prompt_BxT.max())))
  state, selected = decode_selected(model, prompt_BxT, policy=policy, budget_tokens=budget_tokens,
                              window=window, max_new_tokens=max_new_tokens)
  kept = sum(jnp.sum(s) for s in selected) / (len(selected) * selected[0].shape[0]
                                              * selected[0].shape[1] * t)
  return Generation(tokens_BxN=state.tokens_BxN, n_B=state.n_B,
                    stats={"selected_fraction": kept})
