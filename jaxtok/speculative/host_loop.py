"""The host loop of tree speculative decoding: a ``HostDrafter`` (SuffixDecoding arXiv
2411.04975, host prompt lookup) drafts in Python between jitted verify steps.

The step is the device loop's own ``step`` (verify through ``jaxtok.decode.extend``, accept,
commit the path), jitted once per configuration; the drafter's trees are cut to its smallest
verify bucket that holds them (``_trim``), so a short draft costs a short verify. Draft and
verify time are measured separately. ``simulate_host`` replays a host drafter offline against
known greedy responses (no model).
"""
from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.decode import Generation, Model, Sampling
from jaxtok.speculative.drafter import HostDrafter
from jaxtok.speculative.loop import SpecState, start, step, to_generation
from jaxtok.speculative.tree import DraftTree


@dataclasses.dataclass(frozen=True)
class _HostSide:
  """The static stand-in the jitted side sees for a host drafter (which holds mutable Python
  state): no prompt logits, no device state, observes nothing."""
  n_nodes: int
  prompt_logits = 0

  def observe(self, state, tree, logits_BxNxV, acc):
    return state


_STATICS = ("drafter", "capacity", "max_new_tokens", "sampling", "eos_id")
_start = jax.jit(start, static_argnames=_STATICS)
# The Model is an ordinary argument (its static half hashes by identity): a call costs a
# pytree flatten of the parameters, no GraphDef hash.
_step = jax.jit(step, static_argnames=("drafter", "sampling", "eos_id", "max_new_tokens"),
                donate_argnames=("state",))


def _trim(tree: DraftTree, buckets) -> DraftTree:
  """The tree cut to the smallest bucket size holding every row's valid nodes (host drafters
  put them first): a short draft then costs a short verify (one compile per bucket)."""
  if not buckets:
    return tree
  need = int(np.asarray(tree.valid_BxN).sum(-1).max())
  n = min([b for b in buckets if b >= need] or [tree.n_nodes])
  return jax.tree.map(lambda x: x[:, :n], tree)


def _start_state(model: Model, drafter: HostDrafter, prompt_BxT, prompt_len_B, key, *,
                 capacity: int, max_new_tokens: int, sampling: Sampling, eos_id: int | None
                 ) -> tuple[SpecState, functools.partial]:
  """The prefilled state and the step function (model and statics bound)."""
  dev = _HostSide(n_nodes=drafter.n_nodes)
  state = _start(model, dev, (), prompt_BxT, prompt_len_B, key, capacity=capacity,
                 max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id)
  step_fn = functools.partial(_step, model, dev, sampling=sampling, eos_id=eos_id,
                              max_new_tokens=max_new_tokens)
  return state, step_fn


def generate_host(model: Model, drafter: HostDrafter, prompt_BxT, prompt_len_B, key, *,
                  capacity: int, max_new_tokens: int, sampling: Sampling,
                  eos_id: int | None) -> Generation:
  """The host-drafter loop: one jitted step per verify, drafting in Python between steps.
  ``stats`` gains ``wall_s``, ``draft_s`` (host drafting) and ``verify_s`` (device steps)."""
  t0 = time.perf_counter()
  state, step_fn = _start_state(model, drafter, prompt_BxT, prompt_len_B, key,
                                capacity=capacity, max_new_tokens=max_new_tokens,
                                sampling=sampling, eos_id=eos_id)
  prompts = [list(map(int, p[:n])) for p, n in zip(np.asarray(prompt_BxT),
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
    tree = _trim(drafter.propose_host(), drafter.buckets)
    t2 = time.perf_counter()
    state = step_fn(state=state, tree=tree)
    jax.block_until_ready(state.n_B)
    draft_s += t2 - t1
    verify_s += time.perf_counter() - t2
  wall_s = time.perf_counter() - t0
  gen = to_generation(state, max_new_tokens, wall_s=wall_s, draft_s=draft_s, verify_s=verify_s)
  drafter.finish(gen.rows())
  return gen


def warm_host(model: Model, drafter: HostDrafter, prompt_BxT, prompt_len_B=None, *,
              max_new_tokens: int, capacity: int, sampling: Sampling = Sampling(),
              eos_id: int | None = None) -> None:
  """Compiles a host drafter's start and its step at every bucket size (so timed runs do not
  compile); leaves the drafter untouched."""
  prompt_BxT = jnp.asarray(prompt_BxT, jnp.int32)
  b = prompt_BxT.shape[0]
  prompt_len_B = (jnp.full((b,), prompt_BxT.shape[1], jnp.int32) if prompt_len_B is None
                  else jnp.asarray(prompt_len_B, jnp.int32))
  state, step_fn = _start_state(model, drafter, prompt_BxT, prompt_len_B, jax.random.key(0),
                                capacity=capacity, max_new_tokens=max_new_tokens,
                                sampling=sampling, eos_id=eos_id)
  for n in sorted(set(drafter.buckets or ()) | {drafter.n_nodes}):
    tree = DraftTree(tokens_BxN=jnp.zeros((b, n), jnp.int32),
                     parent_BxN=jnp.zeros((b, n), jnp.int32),
                     depth_BxN=jnp.zeros((b, n), jnp.int32).at[:, 1:].set(1),
                     valid_BxN=jnp.zeros((b, n), bool).at[:, 0].set(True))
    state = step_fn(state=state, tree=tree)
  jax.block_until_ready(state.n_B)


def simulate_host(drafter: HostDrafter, prompts: list[list[int]], responses: list[list[int]], *,
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
