"""Tree speculative generation, by drafter protocol: a ``DeviceDrafter`` runs the whole
generation on device (``loop.generate_on_device``), a ``HostDrafter`` drafts in Python between
jitted verify steps (``host_loop.generate_host``). Token Recycling arXiv 2408.08696,
SuffixDecoding arXiv 2411.04975, prompt lookup (Saxena 2023).

``generate`` returns a ``jaxtok.decode.Generation`` whose ``stats`` hold ``steps_B``,
``accepted_B`` (accepted draft tokens that were emitted), ``drafted_B``, ``drafter_state`` (pass
it back as ``drafter_state`` for a hot start) and ``wall_s`` (plus ``draft_s`` / ``verify_s`` for
host drafters); ``mat`` and ``acceptance_rate`` read them. ``make_drafter`` and ``speculate`` are
what ``jaxtok generate --speculate NAME`` calls.
"""
from __future__ import annotations

import time
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.decode import Generation, Model, Sampling, check_model, validate_prompts
from jaxtok.speculative.drafter import HostDrafter, check_drafter
from jaxtok.speculative.host_loop import generate_host, warm_host
from jaxtok.speculative.lookup import PromptLookup
from jaxtok.speculative.loop import generate_on_device, to_generation
from jaxtok.speculative.recycling import TokenRecycling
from jaxtok.speculative.suffix import SuffixDecoding

DRAFTERS = ("tr", "suffix", "pld")


def min_capacity(prompt_len: int, max_new_tokens: int, n_nodes: int) -> int:
  """Slots needed: the committed length of an unfinished row is at most prompt + max_new - 2,
  and its tree takes N slots after it."""
  return prompt_len + max_new_tokens + n_nodes - 2


def generate(model: Model, prompt_BxT, prompt_len_B=None, *, drafter, max_new_tokens: int,
             sampling: Sampling = Sampling(), key=None, capacity: int | None = None,
             eos_id: int | None = None, drafter_state=None) -> Generation:
  """Speculative generation with ``drafter`` (greedy when ``sampling.temperature == 0``): the
  target model's own output, tokens [B, max_new_tokens] zero-padded past ``n_B``.

  ``capacity``: KV slots (default and minimum ``min_capacity``); ``drafter_state``: a device
  drafter's state from an earlier call's ``stats["drafter_state"]`` (hot start; None: fresh).
  """
  check_model(model)
  check_drafter(drafter)
  if not isinstance(sampling, Sampling):
    raise TypeError(f"sampling: expected a jaxtok.decode.Sampling, got {type(sampling).__name__}")
  n = drafter.n_nodes
  t = np.asarray(prompt_BxT).shape[-1]
  need = min_capacity(t, max_new_tokens, n)
  capacity = capacity or need
  if capacity < need:
    raise ValueError(f"capacity: a {n}-node tree needs prompt {t} + max_new_tokens "
                     f"{max_new_tokens} + {n - 2} = {need} cache slots, got {capacity}")
  prompt_BxT, prompt_len_B = validate_prompts(prompt_BxT, prompt_len_B, model.cfg.vocab_size,
                                              max_new_tokens, capacity)
  key = jax.random.key(0) if key is None else key
  statics = dict(capacity=capacity, max_new_tokens=max_new_tokens, sampling=sampling,
                 eos_id=eos_id)
  if isinstance(drafter, HostDrafter):
    return generate_host(model, drafter, prompt_BxT, prompt_len_B, key, **statics)
  if drafter_state is None:
    drafter_state = drafter.init(model.cfg.vocab_size)
  t0 = time.perf_counter()
  state = generate_on_device(model, drafter, drafter_state, prompt_BxT, prompt_len_B, key,
                             **statics)
  jax.block_until_ready(state.n_B)
  return to_generation(state, max_new_tokens, wall_s=time.perf_counter() - t0)


def _total(gens, name: str) -> int:
  return sum(int(np.sum(g.stats[name])) for g in gens)


def _gens(gen: Generation | Iterable[Generation]) -> list[Generation]:
  return [gen] if isinstance(gen, Generation) else list(gen)


def mat(gen: Generation | Iterable[Generation]) -> float:
  """Mean accepted tokens per verify step, bonus included (Token Recycling's MAT), over one
  generation or several: the tokens the verify steps emitted (all but each row's first, which
  the prefill gives) divided by the steps. Tokens cut at EOS or ``max_new_tokens`` are not
  counted."""
  gens = _gens(gen)
  emitted = sum(int(np.sum(np.maximum(np.asarray(g.n_B) - 1, 0))) for g in gens)
  return emitted / max(_total(gens, "steps_B"), 1)


def acceptance_rate(gen: Generation | Iterable[Generation]) -> float:
  """Emitted accepted draft tokens / drafted tokens."""
  gens = _gens(gen)
  return _total(gens, "accepted_B") / max(_total(gens, "drafted_B"), 1)


def tokens_per_s(gen: Generation) -> float:
  return float(np.sum(gen.n_B)) / gen.stats["wall_s"]


def make_drafter(name: str, n_nodes: int | None = None):
  """A fresh drafter: ``tr`` Token Recycling (default 4 nodes: the fastest of N = 4, 8, 16
  for SmolLM2 on a 2-core CPU, where an 8-node verify costs 2-3 decode steps and MAT barely
  grows with N), ``suffix`` SuffixDecoding (16 nodes, verify buckets 1 / 2 / 4 / 16), ``pld``
  prompt lookup (8)."""
  if name == "tr":
    return TokenRecycling(n_nodes=n_nodes or 4)
  if name == "suffix":
    return SuffixDecoding(n_nodes=n_nodes or 16, buckets=(1, 2, 4))
  if name == "pld":
    return PromptLookup(n_nodes=n_nodes or 8)
  raise ValueError(f"--speculate: expected one of {'|'.join(DRAFTERS)}, got {name!r}")


def speculate(model: Model, prompt_ids: list[int], name: str, *, max_new_tokens: int,
              sampling: Sampling = Sampling(), key=None, eos_id: int | None = None,
              n_nodes: int | None = None, warmup: bool = True
              ) -> tuple[list[int], Generation]:
  """One prompt through ``generate`` with the drafter ``name`` (what ``jaxtok generate
  --speculate NAME`` calls). Returns (new token ids, the Generation); with ``warmup`` a first
  run compiles, so the result's tokens/s is the decode rate."""
  drafter = make_drafter(name, n_nodes)
  prompt = jnp.asarray([prompt_ids], jnp.int32)
  kw = dict(max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id)
  if warmup:
    if isinstance(drafter, HostDrafter):
      warm_host(model, drafter, prompt,
                capacity=min_capacity(len(prompt_ids), max_new_tokens, drafter.n_nodes), **kw)
    else:
      generate(model, prompt, drafter=drafter, key=key, **kw)
  gen = generate(model, prompt, drafter=drafter, key=key, **kw)
  return gen.rows()[0], gen
