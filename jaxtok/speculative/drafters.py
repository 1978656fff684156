"""Drafters by name, for command lines (``jaxtok generate --speculate tr|suffix|pld``)."""
from __future__ import annotations

DRAFTERS = ("tr", "suffix", "pld")


def make_drafter(name: str, n_nodes: int | None = None):
  """A fresh drafter: ``tr`` Token Recycling (default 4 nodes: the fastest of N = 4, 8, 16
  for SmolLM2 on a 2-core CPU, where an 8-node verify costs 2-3 decode steps and MAT barely grows
  with N), ``suffix`` SuffixDecoding (16 nodes, verify buckets 1 / 2 / 4 / 16), ``pld`` prompt lookup
  (8)."""
  from jaxtok.speculative.lookup import PromptLookup
  from jaxtok.speculative.recycling import TokenRecycling
  from jaxtok.speculative.suffix import SuffixDecoding

  if name == "tr":
    return TokenRecycling(n_nodes=n_nodes or 4)
  if name == "suffix":
    return SuffixDecoding(n_nodes=n_nodes or 16, buckets=(1, 2, 4))
  if name == "pld":
    return PromptLookup(n_nodes=n_nodes or 8)
  raise ValueError(f"--speculate: expected one of {'|'.join(DRAFTERS)}, got {name!r}")


def speculate(graphdef, params, prompt_ids: list[int], name: str, *, max_new_tokens: int,
              sampling=None, key=None, eos_id: int | None = None, n_nodes: int | None = None,
              warmup: bool = True):
  """One prompt through ``jaxtok.speculative.generate`` with the drafter ``name`` (what
  ``jaxtok generate --speculate NAME`` calls). Returns (new token ids, SpecResult); with
  ``warmup`` a first run compiles, so the result's tokens/s is the decode rate."""
  import jax.numpy as jnp

  from jaxtok.decode import Sampling
  from jaxtok.speculative.loop import generate, warm_host

  drafter = make_drafter(name, n_nodes)
  sampling = Sampling() if sampling is None else sampling
  prompt = jnp.asarray([prompt_ids], jnp.int32)
  kw = dict(max_new_tokens=max_new_tokens, sampling=sampling, eos_id=eos_id)
  if warmup:
    if getattr(drafter, "host", False):
      from jaxtok.speculative.loop import min_capacity
      warm_host(graphdef, params, drafter, prompt,
                capacity=min_capacity(len(prompt_ids), max_new_tokens, drafter.n_nodes), **kw)
    else:
      generate(graphdef, params, prompt, drafter=drafter, key=key, **kw)
  r = generate(graphdef, params, prompt, drafter=drafter, key=key, **kw)
  return [int(t) for t in r.tokens_BxM[0, :int(r.n_B[0])]], r
