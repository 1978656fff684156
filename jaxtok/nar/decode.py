"""KV-cached step decoding of grid orders: NAR's diagonals and the raster AR baseline
(He et al., arXiv 2503.10696, §3.4 and Fig. 3).

One loop serves both orders (``jaxtok.nar.GridOrder``). The condition tokens are prefilled into
a fresh cache; their outputs give step 0 (the origin). Then each step s = 0 .. S-2 is ONE forward
of step s's tokens (padded to the static width W) at their grid coordinates, bidirectional among
themselves and attending to every committed slot (condition + earlier steps); only the valid
tokens are committed, so the padded slots are overwritten next step. Every cached forward is a
``jaxtok.decode.extend`` call (the engine's one place a block meets the cache).
The block's per-axis head outputs, mixed over each neighbour (eq. 3), are the logits of step
s + 1. An n x n grid thus takes 2n - 1 forward passes under NAR and n^2 under raster AR.

Classifier-free guidance (Ho & Salimans, arXiv 2207.12598, as the paper's CFG 2.0) runs the
conditional and null-condition rows in one doubled batch and guides the mixed logits:
``l = l_null + scale * (l_cond - l_null)``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Float, Int

from jaxtok import cache as cache_lib
from jaxtok.config import require
from jaxtok.decode.model import Model
from jaxtok.decode.sampling import Sampling, sample
from jaxtok.decode.step import extend
from jaxtok.nar.order import GridOrder, check_heads, head_logits, nar_order
from jaxtok.nn import masks


def forward_passes(order: GridOrder) -> int:
  """Forward passes to generate one grid: the prefill (giving step 0) plus one per later step."""
  return order.n_steps


def width_segments(order: GridOrder) -> list[tuple[int, int, int]]:
  """(first step, end step, block width) runs covering the fed steps 0 .. S-2. Each step's
  block is its token count rounded up to a power of two (at most W): the forwards then do
  1.27x the work of the true diagonals for 16 x 16 (1.88x with every step padded to W), and
  only log2(W) + 1 block shapes are compiled."""
  n_valid_S = order.slot_valid_SxW.sum(1)
  widths = [min(order.width, 1 << int(np.ceil(np.log2(max(k, 1))))) for k in n_valid_S[:-1]]
  segments = []
  for s, wb in enumerate(widths):
    if segments and segments[-1][2] == wb:
      segments[-1] = (segments[-1][0], s + 1, wb)
    else:
      segments.append((s, s + 1, wb))
  return segments


def _mix(out, order: GridOrder, src_WxH, valid_WxH, grid_vocab: int) -> Float[Array, "B W V"]:
  """Mixed logits of the next step's W targets from this block's head outputs."""
  heads = head_logits(out, order)
  w_WxH = valid_WxH.astype(jnp.float32)
  w_WxH = w_WxH / jnp.maximum(w_WxH.sum(1, keepdims=True), 1.0)  # padded targets: all zero
  total = 0.0
  for h in order.heads_used:
    g_BxWxV = jnp.take(heads[h][..., :grid_vocab], src_WxH[:, h], axis=1)
    total = total + g_BxWxV * w_WxH[None, :, h, None]
  return total


def _guide(logits_BxWxV, cfg_scale):
  if cfg_scale is None:
    return logits_BxWxV
  cond, null = jnp.split(logits_BxWxV, 2, axis=0)
  return null + cfg_scale * (cond - null)


def _run(model: Model, order: GridOrder, cond_BxC, key, forced_BxN, *, grid_vocab: int,
         temperature: float, cfg_scale: float | None, null_cond: int | None):
  """The decode loop. ``forced_BxN`` (teacher forcing through the cache) replaces sampling by
  the given grid and returns the logits of every target [B, N, V]; else returns the grid."""
  b, c = cond_BxC.shape
  n, w, s_total = order.n_tokens, order.width, order.n_steps
  if cfg_scale is not None:  # one doubled batch: conditional rows, then null-condition rows
    cond_BxC = jnp.concatenate([cond_BxC, jnp.full_like(cond_BxC, null_cond)], axis=0)
  rows = cond_BxC.shape[0]
  cache = cache_lib.init_cache(model.cfg, rows, c + n + w)
  pos_CxP = jnp.asarray(order.pos_LxP[:c])
  out, cache = extend(model, cache, cond_BxC, jnp.broadcast_to(pos_CxP, (rows, c, order.n_axes)),
                      masks.CAUSAL, commit_B=jnp.full((rows,), c, jnp.int32), fresh=True)
  first_BxWxV = _guide(_mix(out, order, jnp.asarray(order.first_src_WxH),
                            jnp.asarray(order.first_valid_WxH), grid_vocab), cfg_scale)

  grid_pos_SxWxP = jnp.asarray(order.pos_LxP[c:])[jnp.asarray(order.slot_SxW) % n]
  slot_SxW = jnp.asarray(order.slot_SxW)
  valid_SxW = jnp.asarray(order.slot_valid_SxW)
  sampling = Sampling(temperature=temperature)

  def choose(s, logits_BxWxV, key):
    if forced_BxN is not None:
      return jnp.take(jnp.pad(forced_BxN, ((0, 0), (0, 1))), slot_SxW[s], axis=1)
    tok = sample(logits_BxWxV.reshape(b * w, -1), key, sampling).reshape(b, w)
    return jnp.where(valid_SxW[s][None], tok, 0)

  key, sub = jax.random.split(key)
  tokens_BxW = choose(0, first_BxWxV, sub)
  grid_BxN1 = jnp.zeros((b, n + 1), jnp.int32).at[:, slot_SxW[0]].set(tokens_BxW)

  def body(carry, s, wb):
    cache, tokens_BxW, grid_BxN1, key = carry
    valid_W = valid_SxW[s][:wb]  # a step's valid tokens come first, so wb of them suffice
    block_mask_WxW = (valid_W[:, None] & valid_W[None, :]) | jnp.eye(wb, dtype=bool)
    block_BxW = tokens_BxW[:, :wb]
    rows_tokens = block_BxW if cfg_scale is None else jnp.concatenate([block_BxW] * 2, 0)
    out, cache = extend(model, cache, rows_tokens,
                        jnp.broadcast_to(grid_pos_SxWxP[s][:wb], (rows, wb, order.n_axes)),
                        jnp.broadcast_to(block_mask_WxW, (rows, wb, wb)),
                        commit_B=jnp.full((rows,), valid_W.sum(), jnp.int32))
    logits_BxWxV = _guide(_mix(out, order, jnp.asarray(order.next_src_SxWxH)[s],
                               jnp.asarray(order.next_valid_SxWxH)[s], grid_vocab), cfg_scale)
    key, sub = jax.random.split(key)
    nxt_BxW = choose(s + 1, logits_BxWxV, sub)
    grid_BxN1 = grid_BxN1.at[:, slot_SxW[s + 1]].set(nxt_BxW)
    return (cache, nxt_BxW, grid_BxN1, key), (logits_BxWxV if forced_BxN is not None else None)

  carry, ys = (cache, tokens_BxW, grid_BxN1, key), []
  for start, end, wb in width_segments(order):
    carry, logits_SxBxWxV = jax.lax.scan(functools.partial(body, wb=wb), carry,
                                         jnp.arange(start, end))
    ys.append(logits_SxBxWxV)
  grid_BxN1 = carry[2]
  if forced_BxN is None:
    return grid_BxN1[:, :n]
  all_SxBxWxV = jnp.concatenate([first_BxWxV[None], *ys], axis=0)
  out_BxN1xV = jnp.zeros((b, n + 1, grid_vocab), jnp.float32)
  out_BxN1xV = out_BxN1xV.at[:, slot_SxW.reshape(-1)].set(
      jnp.moveaxis(all_SxBxWxV, 0, 1).reshape(b, s_total * w, grid_vocab))
  return out_BxN1xV[:, :n]


@functools.partial(jax.jit, static_argnames=("order", "grid_vocab", "temperature", "cfg_scale",
                                              "null_cond"))
def _generate_jit(model: Model, cond_BxC, key, *, order, grid_vocab, temperature, cfg_scale,
                  null_cond):
  return _run(model, order, cond_BxC, key, None, grid_vocab=grid_vocab,
              temperature=temperature, cfg_scale=cfg_scale, null_cond=null_cond)


@functools.partial(jax.jit, static_argnames=("order", "grid_vocab"))
def _forced_jit(model: Model, cond_BxC, grid_BxN, *, order, grid_vocab):
  return _run(model, order, cond_BxC, jax.random.key(0), grid_BxN,
              grid_vocab=grid_vocab, temperature=1.0, cfg_scale=None, null_cond=None)


def _check_cond(order: GridOrder, cond_BxC, vocab: int):
  cond_BxC = jnp.asarray(cond_BxC, jnp.int32)
  if cond_BxC.ndim != 2 or cond_BxC.shape[1] != order.n_cond:
    raise ValueError(f"cond_BxC: expected shape [batch, {order.n_cond}], got {cond_BxC.shape}")
  if int(cond_BxC.min()) < 0 or int(cond_BxC.max()) >= vocab:
    raise ValueError(f"cond_BxC: token ids must be in [0, model.vocab_size={vocab}), got range "
                     f"[{int(cond_BxC.min())}, {int(cond_BxC.max())}]")
  return cond_BxC


def generate_grid(model: Model, order: GridOrder, cond_BxC, key, *,
                  grid_vocab: int, temperature: float = 1.0, cfg_scale: float | None = None,
                  null_cond: int | None = None) -> Int[Array, "B N"]:
  """Grids [B, N] (raster order) generated in ``order`` through the KV cache.

  ``temperature`` 0 is greedy; ``cfg_scale`` (None: off) guides towards ``cond_BxC`` against
  the ``null_cond`` condition token.
  """
  check_heads(model.cfg, order)
  vocab = model.cfg.vocab_size
  cond_BxC = _check_cond(order, cond_BxC, vocab)
  require(temperature >= 0, "temperature", ">= 0", temperature)
  require(0 < grid_vocab <= vocab, "grid_vocab", f"in [1, model.vocab_size={vocab}]", grid_vocab)
  require(cfg_scale is None or (null_cond is not None and 0 <= null_cond < vocab), "null_cond",
          f"a token id in [0, {vocab}) when cfg_scale is set", null_cond)
  return _generate_jit(model, cond_BxC, key, order=order, grid_vocab=grid_vocab,
                       temperature=float(temperature),
                       cfg_scale=None if cfg_scale is None else float(cfg_scale),
                       null_cond=None if cfg_scale is None else int(null_cond))


def nar_generate(model: Model, shape: tuple[int, ...], cond_BxC, key, *,
                 grid_vocab: int, temperature: float = 1.0, cfg_scale: float | None = None,
                 null_cond: int | None = None) -> Int[Array, "B N"]:
  """NAR generation of ``shape`` grids: 2n - 1 forward passes for n x n, 2n + t - 2 for
  t x n x n (``generate_grid`` with ``nar_order(shape, n_cond)``)."""
  order = nar_order(tuple(shape), int(jnp.shape(cond_BxC)[1]))
  return generate_grid(model, order, cond_BxC, key, grid_vocab=grid_vocab,
                       temperature=temperature, cfg_scale=cfg_scale, null_cond=null_cond)


def cached_grid_logits(model: Model, order: GridOrder,
                       tokens_BxL: Int[Array, "B L"], grid_vocab: int) -> Float[Array, "B N V"]:
  """The mixed logits of every grid token computed step by step through the KV cache with the
  given tokens fed (teacher forcing); equals ``jaxtok.nar.grid_logits`` of the same tokens."""
  tokens_BxL = jnp.asarray(tokens_BxL, jnp.int32)
  if tokens_BxL.ndim != 2 or tokens_BxL.shape[1] != order.seq_len:
    raise ValueError(f"tokens_BxL: expected shape [batch, {order.seq_len}], got "
                     f"{tokens_BxL.shape}")
  check_heads(model.cfg, order)
  return _forced_jit(model, tokens_BxL[:, :order.n_cond],
                     tokens_BxL[:, order.n_cond:], order=order, grid_vocab=grid_vocab)
