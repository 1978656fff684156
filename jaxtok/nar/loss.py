"""NAR's teacher-forced mixed logits and the grid loss of the one train step (He et al.,
arXiv 2503.10696, eq. 3): one uncached forward of the whole sequence under the order's mask,
each target's logits the mean of its neighbours' axis heads; raster AR reads the backbone head
of the previous token. ``grid_nll`` scores held-out grids with a trained ``Model``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxtok.config import require
from jaxtok.decode.model import Model
from jaxtok.nar.order import (GridOrder, check_heads, head_logits, mix_neighbor_logits,
                              mix_weights, order_mask)
from jaxtok.nn.transformer import forward
from jaxtok.train.losses import LossAux, cross_entropy, weighted_mean


def _check_tokens(order: GridOrder, tokens_BxL) -> None:
  if tokens_BxL.ndim != 2 or tokens_BxL.shape[1] != order.seq_len:
    raise ValueError(f"tokens_BxL: expected shape [batch, {order.seq_len}] (condition + grid), "
                     f"got {tokens_BxL.shape}")


def mixed_logits(graphdef, params, order: GridOrder, tokens_BxL: Int[Array, "B L"],
                 grid_vocab: int, head: int | None = None) -> Float[Array, "B N V"]:
  """Teacher-forced mixed logits of every grid token (one uncached forward of the sequence
  under the order's mask), restricted to the grid vocabulary; traceable, for the train step's
  loss seam. ``head``: use that head alone where neighbours overlap (``mix_weights``)."""
  _check_tokens(order, tokens_BxL)
  b, l = tokens_BxL.shape
  pos_BxLxP = jnp.broadcast_to(jnp.asarray(order.pos_LxP), (b, l, order.n_axes))
  out = forward(graphdef, params, tokens_BxL, pos_BxLxP, order_mask(order, b))
  p = order.n_axes
  if any(h < p - 1 for h in order.heads_used) and len(out.extra_logits or ()) < p - 1:
    raise ValueError(f"model.extra_heads: the {order.kind} order over a {p}-D grid needs "
                     f"{p - 1} extra heads, the model has {len(out.extra_logits or ())}")
  w_NxH = mix_weights(order.valid_NxH, order.src_NxH, order.n_cond, head)
  return mix_neighbor_logits(head_logits(out, order), order.src_NxH, w_NxH, grid_vocab)


@functools.partial(jax.jit, static_argnames=("order", "grid_vocab", "head"))
def _grid_logits(model: Model, order, tokens_BxL, grid_vocab, head):
  return mixed_logits(model.graphdef, model.params, order, tokens_BxL, grid_vocab, head)


def grid_logits(model: Model, order: GridOrder, tokens_BxL: Int[Array, "B L"],
                grid_vocab: int, head: int | None = None) -> Float[Array, "B N V"]:
  """``mixed_logits`` of a trained ``Model`` (jitted; checks the model's heads and RoPE axes)."""
  tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
  _check_tokens(order, tokens_BxL)
  check_heads(model.cfg, order)
  return _grid_logits(model, order, tokens_BxL, grid_vocab, head)


@functools.partial(jax.jit, static_argnames=("order", "grid_vocab", "heads"))
def _batch_nll(model: Model, tok_BxL, *, order, grid_vocab, heads):
  """Summed NLL of one batch under each mixing in ``heads``, from one forward."""
  b, l = tok_BxL.shape
  out = forward(model.graphdef, model.params, tok_BxL,
                jnp.broadcast_to(jnp.asarray(order.pos_LxP), (b, l, order.n_axes)),
                order_mask(order, b))
  hl = head_logits(out, order)
  res = []
  for h_alone in heads:
    w_NxH = jnp.asarray(mix_weights(order.valid_NxH, order.src_NxH, order.n_cond, h_alone))
    logits = sum(jnp.take(hl[h][..., :grid_vocab], jnp.asarray(order.src_NxH[:, h]), axis=1)
                 * w_NxH[None, :, h, None] for h in order.heads_used)
    logp = jax.nn.log_softmax(logits, -1)
    res.append(-jnp.take_along_axis(logp, tok_BxL[:, order.n_cond:, None], -1).sum())
  return jnp.stack(res)


def grid_nll(model: Model, order: GridOrder, tokens_MxL, grid_vocab: int, batch_size: int,
             heads: tuple = (None,)) -> list[float]:
  """Mean teacher-forced NLL per grid token (nats) of held-out sequences [M, L] (whole batches
  of ``batch_size``) for each mixing in ``heads`` (None: mixed; a: head a alone where
  neighbours overlap, Table 5)."""
  tokens_MxL = np.asarray(tokens_MxL)
  _check_tokens(order, tokens_MxL)
  check_heads(model.cfg, order)
  require(0 < batch_size <= len(tokens_MxL), "batch_size", f"in [1, {len(tokens_MxL)}]",
          batch_size)
  total, m = np.zeros(len(heads)), len(tokens_MxL) - len(tokens_MxL) % batch_size
  for i in range(0, m, batch_size):
    total += np.asarray(_batch_nll(model, jnp.asarray(tokens_MxL[i:i + batch_size], jnp.int32),
                                   order=order, grid_vocab=grid_vocab, heads=tuple(heads)))
  return (total / (m * order.n_tokens)).tolist()


def grid_example(grid_N: np.ndarray, cond_C: np.ndarray) -> dict[str, np.ndarray]:
  """One batch row: ``inputs`` = condition + raster grid, ``targets`` = the grid."""
  grid_N = np.asarray(grid_N, np.int32).reshape(-1)
  return {"inputs": np.concatenate([np.asarray(cond_C, np.int32).reshape(-1), grid_N]),
          "targets": grid_N, "weights": np.ones(grid_N.shape, np.float32)}


def to_grid_example(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``example_fn`` for ``jaxtok.train.loop.train``: a source's {grid, cond} -> a batch row."""
  return grid_example(example["grid"], example["cond"])


def grid_loss_fn(order: GridOrder, grid_vocab: int, *, cond_dropout: float = 0.0,
                 null_cond: int | None = None):
  """The loss handed to the one train step: cross-entropy of the mixed logits (NAR) or of the
  previous token's backbone logits (raster). ``cond_dropout``: each row's condition tokens are
  replaced by ``null_cond`` with this probability (drawn from the step key), which trains the
  unconditional model classifier-free guidance needs."""
  require(0 <= cond_dropout < 1, "cond_dropout", "in [0, 1)", cond_dropout)
  require(cond_dropout == 0 or null_cond is not None, "null_cond",
          "a token id when cond_dropout > 0", null_cond)

  def loss_fn(graphdef, params, batch, key):
    tokens_BxL = batch["inputs"]
    if cond_dropout > 0:
      drop_Bx1 = jax.random.bernoulli(key, cond_dropout, (tokens_BxL.shape[0], 1))
      cond_BxC = jnp.where(drop_Bx1, null_cond, tokens_BxL[:, :order.n_cond])
      tokens_BxL = jnp.concatenate([cond_BxC, tokens_BxL[:, order.n_cond:]], axis=1)
    logits_BxNxV = mixed_logits(graphdef, params, order, tokens_BxL, grid_vocab)
    nll_BxN = cross_entropy(logits_BxNxV, batch["targets"])
    w_BxN = batch["weights"].astype(jnp.float32)
    return weighted_mean(nll_BxN, w_BxN), LossAux(nll_BxT=nll_BxN, weights_BxT=w_BxN)
  return loss_fn
