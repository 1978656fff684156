"""The device loop of tree speculative decoding: draft a tree, verify it in one forward, keep
the accepted path (Token Recycling arXiv 2408.08696, SpecInfer arXiv 2305.09781).

One step (kv_and_tree.md §E ``spec_step``): the drafter proposes a tree rooted at the last
emitted token; ``verify`` runs it against the cache (``jaxtok.decode.extend``); ``accept`` picks
the path (greedy or lossless sampling); ``commit_path`` keeps its K/V; the drafter observes the
verified logits. Every step emits n_acc + 1 >= 1 tokens, so the output is the target model's own
(greedy: token for token ``jaxtok.decode.generate``; sampling: the same distribution).

``generate_on_device`` runs a ``DeviceDrafter`` (``jaxtok.speculative.drafter``) inside one
``lax.while_loop`` over ``SpecState`` (flax gemma's ``_SamplingState``): no host round trip per
step. Host drafters share ``start`` and ``step`` (``jaxtok.speculative.host_loop``).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Bool, Int

from jaxtok.cache import KVCache, init_cache
from jaxtok.decode import (Generation, Model, Sampling, block_positions, extend, prefill,
                           sample)
from jaxtok.speculative.commit import commit_path
from jaxtok.speculative.tree import DraftTree
from jaxtok.speculative.verify import accept, verify


@struct.dataclass
class Context:
  """Prompt + emitted tokens of every row (right-padded); the last one (``len - 1``) is the
  root of the next tree, not yet in the cache."""
  tokens_BxC: Int[Array, "B C"]
  len_B: Int[Array, "B"]


@struct.dataclass
class SpecState:
  """Carry of the speculative loop.

  step: i32[] verify steps so far; cache: holds prompt + emitted tokens except the root;
  root_B: last emitted token; ctx: prompt + emitted tokens; tokens_BxM: emitted tokens
  (M = max_new_tokens + N; entries past n_B are junk until ``to_generation``); n_B: emitted per
  row; done_B: row hit EOS or max_new_tokens; key: PRNG key; drafter: the drafter's state;
  steps_B / accepted_B / drafted_B: verify steps, emitted accepted drafts and drafted tokens
  per row.
  """
  step: Int[Array, ""]
  cache: KVCache
  root_B: Int[Array, "B"]
  ctx: Context
  tokens_BxM: Int[Array, "B M"]
  n_B: Int[Array, "B"]
  done_B: Bool[Array, "B"]
  key: jax.Array
  drafter: object
  steps_B: Int[Array, "B"]
  accepted_B: Int[Array, "B"]
  drafted_B: Int[Array, "B"]


def _write_rows(buf_BxM, new_BxN, at_B):
  return jax.vmap(lambda b, x, s: jax.lax.dynamic_update_slice_in_dim(b, x, s, 0))(
      buf_BxM, new_BxN, at_B)


def start(model: Model, drafter, drafter_state, prompt_BxT, prompt_len_B, key, *,
          capacity: int, max_new_tokens: int, sampling: Sampling,
          eos_id: int | None) -> SpecState:
  """Prefill (``jaxtok.decode.prefill``, or ``extend`` keeping the logits of the prompt's last
  W positions for a drafter that learns from them), the first token from the prompt's last
  logits, an empty output buffer."""
  b, t = prompt_BxT.shape
  n = drafter.n_nodes
  cache = init_cache(model.cfg, b, capacity)
  if drafter.prompt_logits:
    # logits of the prompt's last W positions only: [T, V] logits of a large vocabulary are a
    # large share of the prefill's cost
    w = min(drafter.prompt_logits, t)
    at_BxW = prompt_len_B[:, None] - w + jnp.arange(w, dtype=jnp.int32)[None, :]
    out, cache = extend(model, cache, prompt_BxT, block_positions(cache, prompt_len_B, t),
                        commit_B=prompt_len_B, logits_at_BxN=jnp.maximum(at_BxW, 0), fresh=True)
    last_BxV = out.logits[:, -1]
    drafter_state = drafter.observe_prompt(
        drafter_state, jnp.take_along_axis(prompt_BxT, jnp.maximum(at_BxW, 0), axis=1),
        at_BxW >= 0, out.logits)
  else:
    last_BxV, cache = prefill(model, cache, prompt_BxT, prompt_len_B)
  key, sub = jax.random.split(key)
  first_B = sample(last_BxV, sub, sampling)
  ctx = jnp.zeros((b, capacity + n), jnp.int32).at[:, :t].set(prompt_BxT)
  ctx = _write_rows(ctx, first_B[:, None], prompt_len_B)
  tokens = jnp.zeros((b, max_new_tokens + n), jnp.int32).at[:, 0].set(first_B)
  done_B = jnp.full((b,), max_new_tokens <= 1)
  if eos_id is not None:
    done_B |= first_B == eos_id
  zeros = jnp.zeros((b,), jnp.int32)
  return SpecState(step=jnp.int32(0), cache=cache, root_B=first_B,
                   ctx=Context(tokens_BxC=ctx, len_B=prompt_len_B + 1), tokens_BxM=tokens,
                   n_B=jnp.ones((b,), jnp.int32), done_B=done_B, key=key,
                   drafter=drafter_state, steps_B=zeros, accepted_B=zeros, drafted_B=zeros)


def step(model: Model, drafter, state: SpecState, tree: DraftTree, *, sampling: Sampling,
         eos_id: int | None, max_new_tokens: int) -> SpecState:
  """Verify ``tree``, accept, commit, record the emitted tokens and let the drafter observe.
  Tokens past EOS or past ``max_new_tokens`` are not emitted, and accepted drafts among them
  are not counted in ``accepted_B`` (MAT counts emitted tokens only)."""
  n = tree.n_nodes
  # The root is the last emitted token whatever the drafter put there.
  tree = tree.replace(tokens_BxN=tree.tokens_BxN.at[:, 0].set(state.root_B))
  out, written = verify(model, state.cache, tree)
  key, sub = jax.random.split(state.key)
  acc = accept(tree, out.logits, sampling, sub)
  active_B = ~state.done_B
  emitted_BxN = acc.emitted(tree)
  n_emit_B = acc.n_acc_B + 1
  d_BxN = jnp.arange(n)[None, :]
  if eos_id is not None:
    is_eos_BxN = (emitted_BxN == eos_id) & (d_BxN < n_emit_B[:, None])
    n_emit_B = jnp.where(jnp.any(is_eos_BxN, -1), jnp.argmax(is_eos_BxN, -1) + 1, n_emit_B)
  n_emit_B = jnp.where(active_B, jnp.minimum(n_emit_B, max_new_tokens - state.n_B), 0)
  tokens = _write_rows(state.tokens_BxM, jnp.where(active_B[:, None], emitted_BxN, 0),
                       state.n_B)
  ctx_tokens = _write_rows(state.ctx.tokens_BxC, emitted_BxN, state.ctx.len_B)
  n_B = state.n_B + n_emit_B
  done_B = state.done_B | (n_B >= max_new_tokens)
  if eos_id is not None:
    done_B |= jnp.any((emitted_BxN == eos_id) & (d_BxN < n_emit_B[:, None]), -1)
  # the root and the emitted drafts: a cut output commits only what it emitted
  cache = commit_path(written, out.kv, acc, n_keep_B=n_emit_B)
  a = active_B.astype(jnp.int32)
  drafted_B = jnp.sum(tree.valid_BxN, -1).astype(jnp.int32) - 1
  return SpecState(
      step=state.step + 1, cache=cache, root_B=jnp.where(active_B, acc.bonus_B, state.root_B),
      ctx=Context(tokens_BxC=ctx_tokens, len_B=state.ctx.len_B + n_emit_B), tokens_BxM=tokens,
      n_B=n_B, done_B=done_B, key=key,
      drafter=drafter.observe(state.drafter, tree, out.logits, acc),
      steps_B=state.steps_B + a,
      accepted_B=state.accepted_B + jnp.minimum(acc.n_acc_B, n_emit_B),
      drafted_B=state.drafted_B + a * drafted_B)


@functools.partial(jax.jit, static_argnames=("drafter", "capacity", "max_new_tokens",
                                              "sampling", "eos_id"))
def generate_on_device(model: Model, drafter, drafter_state, prompt_BxT, prompt_len_B, key, *,
                       capacity: int, max_new_tokens: int, sampling: Sampling,
                       eos_id: int | None) -> SpecState:
  """Prefill + one ``lax.while_loop`` of propose / verify / accept / commit / observe (the
  program ``jaxtok aot --decode --speculate`` compiles)."""
  state = start(model, drafter, drafter_state, prompt_BxT, prompt_len_B, key, capacity=capacity,
                max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id)

  def body(s: SpecState) -> SpecState:
    tree = drafter.propose(s.drafter, s.ctx, s.root_B)
    return step(model, drafter, s, tree, sampling=sampling, eos_id=eos_id,
                max_new_tokens=max_new_tokens)

  return jax.lax.while_loop(lambda s: (s.step < max_new_tokens) & ~jnp.all(s.done_B), body,
                            state)


def to_generation(state: SpecState, max_new_tokens: int, **stats) -> Generation:
  """The loop's result as a ``Generation``: tokens [B, max_new_tokens] (0 past n_B), with
  ``steps_B``, ``accepted_B``, ``drafted_B``, ``drafter_state`` (pass it back for a hot start)
  and ``stats`` (timings) in ``stats``."""
  keep_BxM = jnp.arange(state.tokens_BxM.shape[1])[None] < state.n_B[:, None]
  tokens = jnp.where(keep_BxM, state.tokens_BxM, 0)[:, :max_new_tokens]
  return Generation(tokens_BxN=tokens, n_B=state.n_B, stats=dict(
      steps_B=state.steps_B, accepted_B=state.accepted_B, drafted_B=state.drafted_B,
      drafter_state=state.drafter, **stats))
