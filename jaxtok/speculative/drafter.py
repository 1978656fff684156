"""The two drafter protocols of tree speculative decoding, and the host drafters' shared half.

A drafter proposes a draft tree (``DraftTree``) rooted at the last emitted token; the target
model verifies it in one forward (SpecInfer arXiv 2305.09781, Token Recycling arXiv 2408.08696).
It drafts either inside the compiled loop or on the host between verify steps:

* ``DeviceDrafter`` (Token Recycling, prompt lookup): a frozen, hashable dataclass (static under
  jit) with a pytree state; the whole generation is one ``lax.while_loop``
  (``jaxtok.speculative.loop``).
* ``HostDrafter`` (SuffixDecoding arXiv 2411.04975, host prompt lookup): Python state; one jitted
  verify step per tree, drafting in Python between steps (``jaxtok.speculative.host_loop``).

``HostTreeDrafter`` holds what every host drafter does the same way - the rows' contexts, the
verify buckets, packing per-row drafts into one ``DraftTree`` - so a host drafter only says how
it drafts one row (``draft_row``) and what it learns (``begin_rows``, ``observe_row``,
``finish``).
"""
from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Int

from jaxtok.config import require
from jaxtok.speculative.tree import DraftTree


@runtime_checkable
class DeviceDrafter(Protocol):
  """Drafts inside the compiled loop. ``prompt_logits``: learn from the logits of the prompt's
  last W positions after prefill (``observe_prompt``; 0: off)."""
  n_nodes: int
  prompt_logits: int

  def init(self, vocab_size: int) -> Any: ...

  def propose(self, state: Any, ctx, root_B: Int[Array, "B"]) -> DraftTree: ...

  def observe(self, state: Any, tree: DraftTree, logits_BxNxV, acc) -> Any: ...


@runtime_checkable
class HostDrafter(Protocol):
  """Drafts on the host from Python token lists. ``buckets``: the verify sizes a tree may be
  cut to (None: always ``n_nodes``)."""
  n_nodes: int
  buckets: tuple[int, ...] | None

  def begin(self, prompts: list[list[int]]) -> None: ...

  def observe_host(self, row: int, emitted: list[int]) -> None: ...

  def propose_host(self) -> DraftTree: ...

  def finish(self, responses: list[list[int]]) -> None: ...


def check_drafter(drafter, name: str = "drafter") -> None:
  """TypeError naming ``name`` unless ``drafter`` implements one of the two protocols."""
  if not isinstance(drafter, (DeviceDrafter, HostDrafter)):
    raise TypeError(f"{name}: expected a jaxtok.speculative.DeviceDrafter (n_nodes, "
                    f"prompt_logits, init, propose, observe) or HostDrafter (n_nodes, buckets, "
                    f"begin, observe_host, propose_host, finish), got {type(drafter).__name__}")


class HostTreeDrafter:
  """The shared half of a host drafter: per-row contexts (prompt + emitted tokens), verify
  buckets, and ``propose_host`` packing each row's draft (``draft_row``) into one tree."""

  def __init__(self, n_nodes: int, buckets: tuple[int, ...] | None = None):
    require(n_nodes >= 1, "n_nodes", ">= 1", n_nodes)
    self.n_nodes = n_nodes
    # verify-size buckets (None: always n_nodes); on a CPU a short draft should cost a short
    # verify, since a verify of N nodes costs more than one decode step
    self.buckets = None if buckets is None else tuple(sorted(set(buckets) | {n_nodes}))
    require(self.buckets is None or min(self.buckets) >= 1, "buckets", "sizes >= 1", buckets)
    self._ctx: list[list[int]] = []

  def begin(self, prompts: list[list[int]]) -> None:
    self._ctx = [list(p) for p in prompts]
    self.begin_rows(prompts)

  def observe_host(self, row: int, emitted: list[int]) -> None:
    self._ctx[row].extend(emitted)
    self.observe_row(row, emitted)

  def begin_rows(self, prompts: list[list[int]]) -> None:
    """A new batch of requests (per-request state)."""

  def observe_row(self, row: int, emitted: list[int]) -> None:
    """Row ``row`` emitted ``emitted`` (its context already includes them)."""

  def finish(self, responses: list[list[int]]) -> None:
    """The batch's final responses (what a drafter keeps across requests)."""

  def draft_row(self, row: int, ctx: list[int]) -> tuple[list[int], list[int]]:
    """(tokens, parents) of row ``row``'s drafted nodes, at most ``n_nodes - 1``, in
    topological order; parent 0 is the root, parent j > 0 the j-th drafted node."""
    raise NotImplementedError

  def propose_host(self) -> DraftTree:
    """Every row's draft packed into one tree, drafted nodes first (``_trim`` cuts the
    tree to a bucket); padding nodes hang off the root, invalid."""
    b, n = len(self._ctx), self.n_nodes
    tokens_BxN = np.zeros((b, n), np.int32)
    parent_BxN = np.zeros((b, n), np.int32)
    depth_BxN = np.zeros((b, n), np.int32)
    valid_BxN = np.zeros((b, n), bool)
    for row, ctx in enumerate(self._ctx):
      toks, pars = self.draft_row(row, ctx)
      tokens_BxN[row, 0], valid_BxN[row, 0] = ctx[-1], True
      for i, (t, q) in enumerate(zip(toks, pars), start=1):
        tokens_BxN[row, i], parent_BxN[row, i] = t, q
        depth_BxN[row, i] = depth_BxN[row, q] + 1
        valid_BxN[row, i] = True
    return DraftTree(tokens_BxN=jnp.asarray(tokens_BxN), parent_BxN=jnp.asarray(parent_BxN),
                     depth_BxN=jnp.asarray(depth_BxN), valid_BxN=jnp.asarray(valid_BxN))
