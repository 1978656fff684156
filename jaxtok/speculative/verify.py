"""Verification of a draft tree: one forward against the cache, then lossless acceptance.

``verify`` runs the N tree nodes through the model (``jaxtok.decode.extend``) at positions
``next_pos + depth`` under the ancestor mask (the tree-attention kernel: each node attends to
the committed cache slots plus its ancestors-or-self). The forward writes the nodes' K/V,
uncommitted, at slots ``length .. length + N``; ``jaxtok.speculative.commit`` keeps the
accepted path.

Acceptance (kv_and_tree.md §B.0), both returning an ``Accept``:

* ``accept_greedy``: node i is correct iff its token is the argmax of its parent's logits; the
  accepted node is the deepest one whose whole root path is correct (lowest index on ties), and
  the bonus token is the argmax at that node. The emitted tokens are exactly greedy decoding's.
* ``accept_sample``: lossless for deterministic (point-mass) drafts (SpecInfer arXiv 2305.09781
  Alg. 2 with q = delta; EAGLE's ``evaluate_posterior``). From the root, try the children of the
  current node in index order: accept child x with probability p(x) / sum(p) under the warped
  target distribution p (``jaxtok.decode.warp``), else set p(x) = 0 and try the next child; the
  bonus is drawn from what remains at the last accepted node. P(first emitted = x) = p(x): with
  r the residual mass before child x_j, P(x_j emitted) = prod_{i<j} (1 - p(x_i)/r_i) * p(x_j)/r_j
  telescopes to p(x_j), and the bonus gets the rest in proportion to p. A duplicate sibling sees
  p(x) = 0 after its twin's rejection, so it is never accepted.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct
from jaxtyping import Array, Float, Int

from jaxtok.cache import KVCache
from jaxtok.decode import Model, Sampling, extend, warp
from jaxtok.nn.transformer import Output
from jaxtok.speculative.tree import DraftTree, ancestor_mask, positions


@struct.dataclass
class Accept:
  """The accepted path of each row.

  path_BxN: node index at depth d of the accepted path (path[:, 0] = 0, the root; entries past
  n_acc repeat the last node); n_acc_B: drafted tokens accepted (path length - 1); node_B: the
  last accepted node; bonus_B: the token drawn at node_B (the next root).
  """
  path_BxN: Int[Array, "B N"]
  n_acc_B: Int[Array, "B"]
  node_B: Int[Array, "B"]
  bonus_B: Int[Array, "B"]

  def emitted(self, tree: DraftTree) -> Int[Array, "B N"]:
    """Tokens emitted this step: path tokens 1..n_acc then the bonus (n_acc + 1 tokens; the rest
    of the row is padding)."""
    toks_BxN = jnp.take_along_axis(tree.tokens_BxN, self.path_BxN, axis=1)
    out_BxN = jnp.roll(toks_BxN, -1, axis=1)  # drop the root
    d = jnp.arange(tree.n_nodes)[None, :]
    return jnp.where(d == self.n_acc_B[:, None], self.bonus_B[:, None],
                     jnp.where(d < self.n_acc_B[:, None], out_BxN, 0))


def verify(model: Model, cache: KVCache, tree: DraftTree) -> tuple[Output, KVCache]:
  """One forward of the tree against the cache (``decode.extend`` under the ancestor mask, no
  commit): the nodes are written uncommitted at ``length``. Returns (the Output, whose ``kv``
  are the nodes' K/V, the written cache). The caller must leave N free slots
  (``jaxtok.speculative.generate`` sizes the cache for it)."""
  return extend(model, cache, tree.tokens_BxN, positions(tree, cache.next_pos),
                ancestor_mask(tree))


def _path(tree: DraftTree, node_B) -> Int[Array, "B N"]:
  """Root-to-node path: path[d] = the ancestor of node at depth d (node itself past its depth)."""
  n = tree.n_nodes
  anc_BxN = jnp.take_along_axis(ancestor_mask(tree), node_B[:, None, None], axis=1)[:, 0]
  d_BxN = jnp.arange(n)[None, :]
  # on_path[b, d, j]: node j is the depth-d ancestor of node_B
  on_BxDxN = anc_BxN[:, None, :] & (tree.depth_BxN[:, None, :] == d_BxN[:, :, None])
  path_BxN = jnp.argmax(on_BxDxN, axis=-1).astype(jnp.int32)
  return jnp.where(jnp.any(on_BxDxN, -1), path_BxN, node_B[:, None])


def accept_greedy(tree: DraftTree, logits_BxNxV: Float[Array, "B N V"]) -> Accept:
  """Deepest node whose root path matches the target argmax at every parent, plus the bonus."""
  argmax_BxN = jnp.argmax(logits_BxNxV, axis=-1).astype(jnp.int32)
  want_BxN = jnp.take_along_axis(argmax_BxN, tree.parent_BxN, axis=1)
  ok_BxN = (tree.tokens_BxN == want_BxN) & tree.valid_BxN
  ok_BxN = ok_BxN.at[:, 0].set(True)
  # accepted iff every ancestor-or-self is ok
  acc_BxN = ~jnp.any(ancestor_mask(tree) & ~ok_BxN[:, None, :], axis=-1)
  score_BxN = jnp.where(acc_BxN, tree.depth_BxN, -1)
  node_B = jnp.argmax(score_BxN, axis=-1).astype(jnp.int32)  # first max: lowest index on ties
  n_acc_B = jnp.take_along_axis(tree.depth_BxN, node_B[:, None], axis=1)[:, 0]
  bonus_B = jnp.take_along_axis(argmax_BxN, node_B[:, None], axis=1)[:, 0]
  return Accept(path_BxN=_path(tree, node_B), n_acc_B=n_acc_B, node_B=node_B, bonus_B=bonus_B)


def accept_sample(tree: DraftTree, logits_BxNxV: Float[Array, "B N V"], sampling: Sampling,
                  key: jax.Array) -> Accept:
  """Lossless acceptance of deterministic drafts under ``sampling`` (temperature > 0)."""
  b, n, v = logits_BxNxV.shape
  p_BxNxV = jax.nn.softmax(warp(logits_BxNxV.reshape(b * n, v), sampling), -1).reshape(b, n, v)
  key_u, key_bonus = jax.random.split(key)
  u_BxN = jax.random.uniform(key_u, (b, n))
  rows = jnp.arange(b)

  def body(i, carry):
    cur_B, r_BxV, path_BxN, n_acc_B = carry
    x_B = tree.tokens_BxN[:, i]
    # Children of the current node come after it in index order (parent[i] < i); once all of
    # them are rejected no later node has the current node as parent, so the walk stops there.
    is_child_B = (tree.parent_BxN[:, i] == cur_B) & tree.valid_BxN[:, i]
    mass_B = jnp.sum(r_BxV, axis=-1)
    px_B = r_BxV[rows, x_B]
    take_B = is_child_B & (u_BxN[:, i] * mass_B < px_B)
    reject_B = is_child_B & ~take_B
    r_BxV = jnp.where(take_B[:, None], p_BxNxV[:, i],
                      r_BxV.at[rows, x_B].set(jnp.where(reject_B, 0.0, px_B)))
    n_acc_B = n_acc_B + take_B.astype(jnp.int32)
    path_BxN = jnp.where(take_B[:, None] & (jnp.arange(n)[None, :] >= n_acc_B[:, None]),
                         i, path_BxN)
    return jnp.where(take_B, i, cur_B), r_BxV, path_BxN, n_acc_B

  init = (jnp.zeros((b,), jnp.int32), p_BxNxV[:, 0], jnp.zeros((b, n), jnp.int32),
          jnp.zeros((b,), jnp.int32))
  node_B, r_BxV, path_BxN, n_acc_B = jax.lax.fori_loop(1, n, body, init)
  bonus_B = jax.random.categorical(key_bonus, jnp.log(r_BxV), axis=-1).astype(jnp.int32)
  return Accept(path_BxN=path_BxN, n_acc_B=n_acc_B, node_B=node_B, bonus_B=bonus_B)


def accept(tree: DraftTree, logits_BxNxV, sampling: Sampling, key) -> Accept:
  """Greedy acceptance at temperature 0, lossless sampling acceptance otherwise."""
  if sampling.greedy:
    return accept_greedy(tree, logits_BxNxV)
  return accept_sample(tree, logits_BxNxV, sampling, key)
