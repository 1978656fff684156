"""Flattened draft trees for tree speculative decoding (kv_and_tree.md §B.0).

A draft tree of N nodes (N static) per row: node 0 is the root, the last emitted token whose K/V
is not yet in the cache; every other node is a drafted continuation of its parent. Nodes are in
topological order, ``parent[i] < i`` (``parent[0] = 0``), so one forward of the N tokens with the
ancestor-or-self mask (Medusa arXiv 2401.10774, SpecInfer arXiv 2305.09781) scores every path at
once. Siblings share a position: node i sits at ``next_pos + depth[i]``. Padding nodes
(``valid = False``) hang off the root, see only themselves and are never accepted.

Static templates (Token Recycling arXiv 2408.08696 §3.2) are trees whose shape is a constant:
node i takes the ``rank[i]``-th candidate of its parent. ``template`` builds the N-node template
that maximises the expected accepted length under a per-rank acceptance prior (best-first, as
Sequoia / EAGLE-2 build their static trees); the paper's own 80-node "2.2.2" tree has depths 1-6
with 8/21/25/15/8/3 nodes, ours differs in detail.
"""
from __future__ import annotations

import heapq

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct
from jaxtyping import Array, Bool, Int

from jaxtok.config import require
from jaxtok.nn import masks


@struct.dataclass
class DraftTree:
  tokens_BxN: Int[Array, "B N"]
  parent_BxN: Int[Array, "B N"]  # parent[:, 0] = 0, parent[:, i] < i
  depth_BxN: Int[Array, "B N"]  # depth[:, 0] = 0
  valid_BxN: Bool[Array, "B N"]  # node 0 always valid; descendants of invalid nodes invalid

  @property
  def n_nodes(self) -> int:
    return self.tokens_BxN.shape[1]


def check_parents(parent_BxN, name: str = "parent") -> np.ndarray:
  """Host-side check that ``parent`` is a flattened tree in topological order; returns it."""
  parent = np.asarray(parent_BxN)
  if parent.ndim != 2 or parent.shape[1] < 1:
    raise ValueError(f"{name}: expected a [batch, nodes] integer array, got shape {parent.shape}")
  idx = np.arange(parent.shape[1])
  bad = (parent < 0) | ((parent >= idx) & (idx > 0)) | ((idx == 0) & (parent != 0))
  if bad.any():
    b, i = map(int, np.argwhere(bad)[0])
    raise ValueError(f"{name}: expected parent[0] = 0 and 0 <= parent[i] < i (topological "
                     f"order), got parent[{b}, {i}] = {int(parent[b, i])}")
  return parent


def depths(parent_BxN: Int[Array, "B N"]) -> Int[Array, "B N"]:
  """Depth of every node; one pass in index order suffices because ``parent[i] < i``."""
  n = parent_BxN.shape[1]

  def body(i, d_BxN):
    d_parent_B = jnp.take_along_axis(d_BxN, parent_BxN[:, i][:, None], axis=1)[:, 0]
    return d_BxN.at[:, i].set(jnp.where(i == 0, 0, d_parent_B + 1))
  return jax.lax.fori_loop(1, n, body, jnp.zeros_like(parent_BxN))


def make_tree(tokens_BxN, parent_BxN, valid_BxN=None, *, check: bool = True) -> DraftTree:
  """A DraftTree from tokens and parents (depths computed). ``check`` validates the parents on
  the host (turn it off under jit, where the parents are traced)."""
  if check:
    check_parents(parent_BxN)
  tokens_BxN = jnp.asarray(tokens_BxN, jnp.int32)
  parent_BxN = jnp.asarray(parent_BxN, jnp.int32)
  if tokens_BxN.shape != parent_BxN.shape:
    raise ValueError(f"tokens_BxN: expected the parents' shape {parent_BxN.shape}, got "
                     f"{tokens_BxN.shape}")
  valid_BxN = (jnp.ones(tokens_BxN.shape, bool) if valid_BxN is None
               else jnp.asarray(valid_BxN, bool).at[:, 0].set(True))
  # A node is valid only if its parent is (so an accepted path never crosses padding).
  valid_BxN = valid_BxN & jnp.all(~masks.tree(parent_BxN) | valid_BxN[:, None, :], axis=-1)
  return DraftTree(tokens_BxN=tokens_BxN, parent_BxN=parent_BxN, depth_BxN=depths(parent_BxN),
                   valid_BxN=valid_BxN)


def chain(tokens_BxN, valid_BxN=None) -> DraftTree:
  """A path-shaped tree (a plain draft sequence): node i's parent is i - 1."""
  tokens_BxN = jnp.asarray(tokens_BxN, jnp.int32)
  b, n = tokens_BxN.shape
  parent_BxN = jnp.broadcast_to(jnp.maximum(jnp.arange(n, dtype=jnp.int32) - 1, 0), (b, n))
  return make_tree(tokens_BxN, parent_BxN, valid_BxN, check=False)


def ancestor_mask(tree: DraftTree) -> Bool[Array, "B N N"]:
  """mask[b, i, j]: node i may attend to node j (j is an ancestor-or-self of i). Padding nodes
  are hidden from every other node; each node always sees itself (no empty softmax row)."""
  n = tree.n_nodes
  return masks.tree(tree.parent_BxN) & (tree.valid_BxN[:, None, :] | jnp.eye(n, dtype=bool)[None])


def positions(tree: DraftTree, next_pos_B: Int[Array, "B"]) -> Int[Array, "B N"]:
  """RoPE positions ``next_pos + depth`` (siblings share a position)."""
  return next_pos_B[:, None] + tree.depth_BxN


# --- static templates ----------------------------------------------------------------------

# Prior probability that the model's next token is its r-th candidate (r = 0, 1, ...): a
# decreasing profile of the shape top-k acceptance has in the Token Recycling and Medusa papers.
RANK_PRIOR = (0.55, 0.14, 0.07, 0.045, 0.03, 0.022, 0.017, 0.013)


@struct.dataclass
class Template:
  """A static tree shape: node i takes candidate ``rank[i]`` of node ``parent[i]`` (numpy)."""
  parent_N: np.ndarray = struct.field(pytree_node=False)
  rank_N: np.ndarray = struct.field(pytree_node=False)
  depth_N: np.ndarray = struct.field(pytree_node=False)

  @property
  def n_nodes(self) -> int:
    return len(self.parent_N)

  @property
  def max_depth(self) -> int:
    return int(self.depth_N.max())


def template(n_nodes: int, k: int = 8, prior: tuple[float, ...] = RANK_PRIOR) -> Template:
  """The N-node static tree (root included) maximising the expected accepted length when the
  r-th candidate is correct with probability ``prior[r]``: best-first expansion by path
  probability (a child's is never above its parent's, so the chosen set is a tree). Nodes come
  out in BFS order (depth, then parent, then rank)."""
  require(n_nodes >= 1, "n_nodes", ">= 1", n_nodes)
  require(k >= 1, "k", ">= 1", k)
  prior = tuple(prior[:k]) + (prior[-1] * 0.5,) * max(0, k - len(prior))
  # heap of (-prob, path) ; path = tuple of ranks from the root
  heap = [(-prior[r], (r,)) for r in range(k)]
  heapq.heapify(heap)
  chosen = [()]
  while len(chosen) < n_nodes and heap:
    neg_p, path = heapq.heappop(heap)
    chosen.append(path)
    for r in range(k):
      heapq.heappush(heap, (neg_p * prior[r], path + (r,)))
  chosen.sort(key=lambda p: (len(p), p))
  index = {p: i for i, p in enumerate(chosen)}
  parent = np.array([0] + [index[p[:-1]] for p in chosen[1:]], np.int32)
  rank = np.array([0] + [p[-1] for p in chosen[1:]], np.int32)
  depth = np.array([len(p) for p in chosen], np.int32)
  return Template(parent_N=parent, rank_N=rank, depth_N=depth)


def from_template(tmpl: Template, tokens_BxN) -> DraftTree:
  """The DraftTree of a template filled with tokens (all nodes valid; traceable)."""
  tokens_BxN = jnp.asarray(tokens_BxN, jnp.int32)
  b = tokens_BxN.shape[0]
  bcast = lambda a: jnp.broadcast_to(jnp.asarray(a, jnp.int32), (b, tmpl.n_nodes))  # noqa: E731
  return DraftTree(tokens_BxN=tokens_BxN, parent_BxN=bcast(tmpl.parent_N),
                   depth_BxN=bcast(tmpl.depth_N), valid_BxN=jnp.ones((b, tmpl.n_nodes), bool))
