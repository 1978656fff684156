"""Speculative generation: draft a tree, verify it in one forward, keep the accepted path.

One step (kv_and_tree.md §E ``spec_step``): the drafter proposes a tree rooted at the last
emitted token; ``verify`` runs it against the cache; ``accept`` picks the path (greedy or
lossless sampling); ``commit_path`` keeps its K/V; the drafter observes the verified logits.
Every step emits n_acc + 1 >= 1 tokens, so the output is the target model's own (greedy: token
for token ``jaxtok.decode.generate``; sampling: the same distribution).

Drafters (a frozen dataclass each, static under jit) follow one small protocol:

* device drafters (Token Recycling, prompt lookup): ``init(vocab_size) -> state`` (a pytree),
  ``propose(state, ctx, root_B) -> DraftTree``, ``observe(state, tree, logits, accept) ->
  state``, and ``prompt_logits`` (W: learn from the prompt's last W positions, 0: no) with
  ``observe_prompt(state, tokens_BxW, valid_BxW, logits_BxWxV)``.
  The whole generation is one ``lax.while_loop`` over ``SpecState`` (flax gemma's
  ``_SamplingState``): no host round trip per step.
* host drafters (SuffixDecoding): ``host = True``, ``propose_host(contexts) -> DraftTree`` from
  Python token lists, ``observe_host(row, emitted)``, ``finish(prompts, responses)``. The step
  is one jitted call; drafting happens on the host between steps, and is timed.
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct
from jaxtyping import Array, Bool, Int

from jaxtok import cache as cache_lib
from jaxtok.cache import KVCache, init_cache
from jaxtok.decode import Sampling, sample, validate_prompts
from jaxtok.nn.transformer import forward
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
  (M = max_new_tokens + N; entries past n_B are junk until ``finish``); n_B: emitted per row;
  done_B: row hit EOS or max_new_tokens; key: PRNG key; drafter: the drafter's state;
  steps_B / accepted_B / drafted_B: verify steps, accepted and drafted tokens per row.
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


@dataclasses.dataclass
class SpecResult:
  tokens_BxM: np.ndarray  # [B, max_new_tokens], 0 past n_B
  n_B: np.ndarray
  drafter_state: object  # carry it into the next call for a hot start
  steps: int  # verify steps summed over rows
  accepted: int  # accepted draft tokens summed over rows
  drafted: int  # drafted tokens summed over rows
  wall_s: float
  draft_s: float | None = None  # host drafting time (host drafters only)
  verify_s: float | None = None  # device step time (host drafters only)

  @property
  def mat(self) -> float:
    """Mean accepted tokens per verify step, bonus included (Token Recycling's MAT)."""
    return (self.accepted + self.steps) / max(self.steps, 1)

  @property
  def acceptance_rate(self) -> float:
    return self.accepted / max(self.drafted, 1)

  @property
  def tokens_per_s(self) -> float:
    return float(self.n_B.sum()) / self.wall_s


def _write_rows(buf_BxM, new_BxN, at_B):
  return jax.vmap(lambda b, x, s: jax.lax.dynamic_update_slice_in_dim(b, x, s, 0))(
      buf_BxM, new_BxN, at_B)


def start(graphdef: nnx.GraphDef, params, drafter, drafter_state, prompt_BxT, prompt_len_B, key,
          *, capacity: int, max_new_tokens: int, sampling: Sampling) -> SpecState:
  """Prefill, the first token from the prompt's last logits, an empty output buffer."""
  b, t = prompt_BxT.shape
  n = drafter.n_nodes
  cfg = nnx.merge(graphdef, params).cfg
  cache = init_cache(cfg, b, capacity)
  offset_BxT = jnp.arange(t, dtype=jnp.int32)[None, :]
  positions_BxT = jnp.where(offset_BxT < prompt_len_B[:, None], offset_BxT, -1)
  if drafter.prompt_logits:
    # logits of the prompt's last W positions only: [T, V] logits of a large vocabulary are a
    # large share of the prefill's cost
    w = min(drafter.prompt_logits, t)
    at_BxW = prompt_len_B[:, None] - w + jnp.arange(w, dtype=jnp.int32)[None, :]
    out = forward(graphdef, params, prompt_BxT, positions_BxT, cache=cache, fresh_cache=True,
                  logits_at_BxN=jnp.maximum(at_BxW, 0))
    last_BxV = out.logits[:, -1]
    drafter_state = drafter.observe_prompt(
        drafter_state, jnp.take_along_axis(prompt_BxT, jnp.maximum(at_BxW, 0), axis=1),
        at_BxW >= 0, out.logits)
  else:
    out = forward(graphdef, params, prompt_BxT, positions_BxT, cache=cache, fresh_cache=True,
                  logits_at_BxN=(prompt_len_B - 1)[:, None])
    last_BxV = out.logits[:, 0]
  cache = cache_lib.commit(out.cache, prompt_len_B)
  key, sub = jax.random.split(key)
  first_B = sample(last_BxV, sub, sampling)
  ctx = jnp.zeros((b, capacity + n), jnp.int32).at[:, :t].set(prompt_BxT)
  ctx = _write_rows(ctx, first_B[:, None], prompt_len_B)
  tokens = jnp.zeros((b, max_new_tokens + n), jnp.int32).at[:, 0].set(first_B)
  zeros = jnp.zeros((b,), jnp.int32)
  return SpecState(step=jnp.int32(0), cache=cache, root_B=first_B,
                   ctx=Context(tokens_BxC=ctx, len_B=prompt_len_B + 1), tokens_BxM=tokens,
                   n_B=jnp.ones((b,), jnp.int32), done_B=jnp.full((b,), max_new_tokens <= 1),
                   key=key, drafter=drafter_state, steps_B=zeros, accepted_B=zeros,
                   drafted_B=zeros)


def _eos_done(state: SpecState, eos_id):
  if eos_id is None:
    return state.done_B
  return state.done_B | (state.tokens_BxM[:, 0] == eos_id)


def step(graphdef: nnx.GraphDef, params, drafter, state: SpecState, tree: DraftTree, *,
         sampling: Sampling, eos_id: int | None, max_new_tokens: int) -> SpecState:
  """Verify ``tree``, accept, commit, record the emitted tokens and let the drafter observe."""
  n = tree.n_nodes
  # The root is the last emitted token whatever the drafter put there.
  tree = tree.replace(tokens_BxN=tree.tokens_BxN.at[:, 0].set(state.root_B))
  out = verify(graphdef, params, state.cache, tree)
  key, sub = jax.random.split(state.key)
  acc = accept(tree, out.logits, sampling, sub)
  active_B = ~state.done_B
  emitted_BxN = acc.emitted(tree)
  n_emit_B = acc.n_acc_B + 1
  d_BxN = jnp.arange(n)[None, :]
  if eos_id is not None:
    is_eos_BxN = (emitted_BxN == eos_id) & (d_BxN < n_emit_B[:, None])
    n_emit_B = jnp.where(jnp.any(is_eos_BxN, -1), jnp.argmax(is_eos_BxN, -1) + 1, n_emit_B)
  n_emit_B = jnp.where(active_B, n_emit_B, 0)
  tokens = _write_rows(state.tokens_BxM, jnp.where(active_B[:, None], emitted_BxN, 0),
                       state.n_B)
  ctx_tokens = _write_rows(state.ctx.tokens_BxC, emitted_BxN, state.ctx.len_B)
  n_B = state.n_B + n_emit_B
  done_B = state.done_B | (n_B >= max_new_tokens)
  if eos_id is not None:
    done_B |= jnp.any((emitted_BxN == eos_id) & (d_BxN < n_emit_B[:, None]), -1)
  cache = commit_path(out.cache, out.kv, acc, active_B=active_B)
  a = active_B.astype(jnp.int32)
  drafted_B = jnp.sum(tree.valid_BxN, -1).astype(jnp.int32) - 1
  return SpecState(
      step=state.step + 1, cache=cache, root_B=jnp.where(active_B, acc.bonus_B, state.root_B),
      ctx=Context(tokens_BxC=ctx_tokens, len_B=state.ctx.len_B + n_emit_B), tokens_BxM=tokens,
      n_B=n_B, done_B=done_B, key=key,
      drafter=drafter.observe(state.drafter, tree, out.logits, acc),
      steps_B=state.steps_B + a, accepted_B=state.accepted_B + a * acc.n_acc_B,
      drafted_B=state.drafted_B + a * drafted_B)


@functools.partial(jax.jit, static_argnames=("graphdef", "drafter", "capacity", "max_new_tokens",
                                              "sampling", "eos_id"))
def generate_on_device(graphdef, params, drafter, drafter_state, prompt_BxT, prompt_len_B, key, *,
                       capacity, max_new_tokens, sampling, eos_id):
  """Prefill + one ``lax.while_loop`` of propose / verify / accept / commit / observe."""
  state = start(graphdef, params, drafter, drafter_state, prompt_BxT, prompt_len_B, key,
                capacity=capacity, max_new_tokens=max_new_tokens, sampling=sampling)
  state = state.replace(done_B=_eos_done(state, eos_id))

  def body(s: SpecState) -> SpecState:
    tree = drafter.propose(s.drafter, s.ctx, s.root_B)
    return step(graphdef, params, drafter, s, tree, sampling=sampling, eos_id=eos_id,
                max_new_tokens=max_new_tokens)

  state = jax.lax.while_loop(lambda s: (s.step < max_new_tokens) & ~jnp.all(s.done_B), body,
                             state)
  return state


def _finish(state: SpecState, max_new_tokens: int, wall_s: float, **times) -> SpecResult:
  tokens, n_B, steps, acc, drafted = jax.device_get(
      (state.tokens_BxM, state.n_B, state.steps_B, state.accepted_B, state.drafted_B))
  n_B = np.minimum(n_B, max_new_tokens)
  tokens = np.where(np.arange(tokens.shape[1])[None] < n_B[:, None], tokens, 0)
  return SpecResult(tokens_BxM=tokens[:, :max_new_tokens], n_B=n_B, drafter_state=state.drafter,
                    steps=int(steps.sum()), accepted=int(acc.sum()), drafted=int(drafted.sum()),
                    wall_s=wall_s, **times)


def min_capacity(prompt_len: int, max_new_tokens: int, n_nodes: int) -> int:
  """Slots needed: the committed length of an unfinished row is at most prompt + max_new - 2,
  and its tree takes N slots after it."""
  return prompt_len + max_new_tokens + n_nodes - 2


def generate(graphdef: nnx.GraphDef, params, prompt_BxT, prompt_len_B=None, *, drafter,
             max_new_tokens: int, sampling: Sampling = Sampling(), key=None,
             capacity: int | None = None, eos_id: int | None = None,
             drafter_state=None) -> SpecResult:
  """Speculative generation with ``drafter`` (greedy when ``sampling.temperature == 0``).

  Returns a ``SpecResult``: tokens [B, max_new_tokens] zero-padded after EOS, counts, the
  drafter's state (pass it back as ``drafter_state`` for a hot start) and statistics (MAT,
  acceptance rate, wall time; draft vs verify time for host drafters).
  """
  cfg = nnx.merge(graphdef, params).cfg
  n = drafter.n_nodes
  t = np.asarray(prompt_BxT).shape[-1]
  need = min_capacity(t, max_new_tokens, n)
  capacity = capacity or need
  if capacity < need:
    raise ValueError(f"capacity: a {n}-node tree needs prompt {t} + max_new_tokens "
                     f"{max_new_tokens} + {n - 2} = {need} cache slots, got {capacity}")
  prompt_BxT, prompt_len_B = validate_prompts(prompt_BxT, prompt_len_B, cfg.vocab_size,
                                              max_new_tokens, capacity)
  key = jax.random.key(0) if key is None else key
  if getattr(drafter, "host", False):
    return _generate_host(graphdef, params, drafter, drafter_state, prompt_BxT, prompt_len_B,
                          key, capacity=capacity, max_new_tokens=max_new_tokens,
                          sampling=sampling, eos_id=eos_id)
  if drafter_state is None:
    drafter_state = drafter.init(cfg.vocab_size)
  t0 = time.perf_counter()
  state = generate_on_device(graphdef, params, drafter, drafter_state, prompt_BxT,
                             prompt_len_B, key, capacity=capacity,
                             max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id)
  jax.block_until_ready(state.n_B)
  return _finish(state, max_new_tokens, time.perf_counter() - t0)


@functools.partial(jax.jit, static_argnames=("graphdef", "drafter", "capacity", "max_new_tokens",
                                              "sampling", "eos_id"))
def _start_jit(graphdef, params, drafter, drafter_state, prompt_BxT, prompt_len_B, key, *,
               capacity, max_new_tokens, sampling, eos_id):
  s = start(graphdef, params, drafter, drafter_state, prompt_BxT, prompt_len_B, key,
            capacity=capacity, max_new_tokens=max_new_tokens, sampling=sampling)
  return s.replace(done_B=_eos_done(s, eos_id))


@functools.lru_cache(maxsize=32)
def _host_step(graphdef, params_def, drafter, max_new_tokens, sampling, eos_id):
  """The jitted host-loop step for these statics: ``fn(param_leaves, state, tree)``.

  Made once per configuration so a step call carries no static arguments: hashing a SmolLM2
  GraphDef as a jit static argument took ~40 ms per call on the loaded 2-core CPU (profiled),
  and flattening the params' nnx.State sorts its keys in Python; the leaves are passed as a
  flat list and unflattened inside the trace instead."""
  def fn(param_leaves, state, tree):
    params = jax.tree.unflatten(params_def, param_leaves)
    return step(graphdef, params, drafter, state, tree, sampling=sampling, eos_id=eos_id,
                max_new_tokens=max_new_tokens)
  return jax.jit(fn, donate_argnums=(1,))


def _step_fn(graphdef, params, drafter, *, max_new_tokens, sampling, eos_id):
  """(step function, param leaves) for the host loop (one hash of the statics per call)."""
  leaves, params_def = jax.tree.flatten(params)
  return _host_step(graphdef, params_def, drafter, max_new_tokens, sampling, eos_id), leaves


def _trim(tree: DraftTree, buckets) -> DraftTree:
  """The tree cut to the smallest bucket size holding every row's valid nodes (host drafters
  put them first): a short draft then costs a short verify (one compile per bucket)."""
  if not buckets:
    return tree
  need = int(np.asarray(tree.valid_BxN).sum(-1).max())
  n = min([b for b in buckets if b >= need] or [tree.n_nodes])
  return jax.tree.map(lambda x: x[:, :n], tree)


@dataclasses.dataclass(frozen=True)
class _HostSide:
  n_nodes: int
  prompt_logits = 0

  def observe(self, state, tree, logits_BxNxV, acc):
    return state


def _generate_host(graphdef, params, drafter, drafter_state, prompt_BxT, prompt_len_B, key, *,
                   capacity, max_new_tokens, sampling, eos_id) -> SpecResult:
  """The host-drafter loop: one jitted step per verify, drafting in Python between steps."""
  statics = dict(max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id)
  # The jitted side sees a static stand-in (the host drafter holds mutable Python state).
  dev = _HostSide(n_nodes=drafter.n_nodes)
  t0 = time.perf_counter()
  state = _start_jit(graphdef, params, dev, (), prompt_BxT, prompt_len_B, key,
                     capacity=capacity, **statics)
  step_fn, leaves = _step_fn(graphdef, params, dev, **statics)
  prompts = [list(map(int, p[:l])) for p, l in zip(np.asarray(prompt_BxT),
                                                  np.asarray(prompt_len_B))]
  drafter.begin(prompts)
  draft_s = verify_s = 0.0
  n_prev = np.zeros(len(prompts), np.int64)
  for _ in range(max_new_tokens):
    tokens, n_B, done_B = jax.device_get((state.tokens_BxM, state.n_B, state.done_B))
    for row in range(len(prompts)):
      if n_B[row] > n_prev[row]:
        drafter.observe_host(row, [int(x) for x in tokens[row, n_prev[row]:n_B[row]]])
    n_prev = n_B.copy()
    if done_B.all():
      break
    t1 = time.perf_counter()
    tree = _trim(drafter.propose_host(), getattr(drafter, "buckets", None))
    t2 = time.perf_counter()
    state = step_fn(leaves, state, tree)
    jax.block_until_ready(state.n_B)
    draft_s += t2 - t1
    verify_s += time.perf_counter() - t2
  result = _finish(state, max_new_tokens, time.perf_counter() - t0, draft_s=draft_s,
                   verify_s=verify_s)
  result.drafter_state = drafter_state
  drafter.finish([list(map(int, r[:n])) for r, n in zip(result.tokens_BxM, result.n_B)])
  return result


def warm_host(graphdef: nnx.GraphDef, params, drafter, prompt_BxT, prompt_len_B=None, *,
              max_new_tokens: int, capacity: int, sampling: Sampling = Sampling(),
              eos_id: int | None = None) -> None:
  """Compiles a host drafter's start and its step at every bucket size (so timed runs do not
  compile); leaves the drafter untouched."""
  prompt_BxT = jnp.asarray(prompt_BxT, jnp.int32)
  b = prompt_BxT.shape[0]
  prompt_len_B = (jnp.full((b,), prompt_BxT.shape[1], jnp.int32) if prompt_len_B is None
                  else jnp.asarray(prompt_len_B, jnp.int32))
  statics = dict(max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id)
  dev = _HostSide(n_nodes=drafter.n_nodes)
  state = _start_jit(graphdef, params, dev, (), prompt_BxT, prompt_len_B, jax.random.key(0),
                     capacity=capacity, **statics)
  step_fn, leaves = _step_fn(graphdef, params, dev, **statics)
  for n in sorted(set(getattr(drafter, "buckets", None) or ()) | {drafter.n_nodes}):
    tree = DraftTree(tokens_BxN=jnp.zeros((b, n), jnp.int32),
                     parent_BxN=jnp.zeros((b, n), jnp.int32),
                     depth_BxN=jnp.zeros((b, n), jnp.int32).at[:, 1:].set(1),
                     valid_BxN=jnp.zeros((b, n), bool).at[:, 0].set(True))
    state = step_fn(leaves, state, tree)
  jax.block_until_ready(state.n_B)


def simulate_host(drafter, prompts: list[list[int]], responses: list[list[int]], *,
                  max_new_tokens: int) -> tuple[int, int, int]:
  """Offline replay of a host drafter against known greedy responses (ArcticInference's
  ``simulator.py``): each step accepts the deepest tree node whose path matches the response,
  plus the bonus token, with no model call. Under greedy verification this is exactly the
  online run's (steps, accepted, drafted); it does call ``finish``, as the online run does."""
  drafter.begin(prompts)
  steps = accepted = drafted = 0
  for row, resp in enumerate(responses):
    drafter.observe_host(row, resp[:1])
  n = [1] * len(prompts)
  while True:
    live = [r for r in range(len(prompts)) if n[r] < min(len(responses[r]), max_new_tokens)]
    if not live:
      break
    tree = drafter.propose_host()
    tok, par, dep, val = (np.asarray(a) for a in (tree.tokens_BxN, tree.parent_BxN,
                                                  tree.depth_BxN, tree.valid_BxN))
    for r in live:
      resp = responses[r]
      ok = np.zeros(tok.shape[1], bool)
      ok[0] = True
      for i in range(1, tok.shape[1]):  # parent[i] < i: parents are decided first
        d = n[r] + dep[r, i] - 1
        ok[i] = val[r, i] and ok[par[r, i]] and d < len(resp) and tok[r, i] == resp[d]
      n_acc = int(dep[r][ok].max())
      steps, accepted, drafted = steps + 1, accepted + n_acc, drafted + int(val[r].sum()) - 1
      emit = resp[n[r]:n[r] + n_acc + 1]
      drafter.observe_host(r, emit)
      n[r] += len(emit)
  drafter.finish([resp[:max_new_tokens] for resp in responses])
  return steps, accepted, drafted
