"""Neighboring autoregressive modeling (NAR; He et al., arXiv 2503.10696): order, mask, heads.

NAR generates a grid (image n x n, video t x n x n) in order of Manhattan distance from the
first token: step d emits every token with ``sum(coords) == d`` at once, so an n x n grid takes
2n - 1 forward passes and t x n x n takes 2n + t - 2 (paper §3.1). Tokens stay in raster order in
the sequence; RoPE runs over their grid coordinates (N-D RoPE, ``ModelConfig.rope_axes``).

* **Proximity-aware mask** (§3.2): grid token a sees grid token b iff D(b) <= D(a) (causal
  across steps, bidirectional within a step); condition tokens are causal among themselves and
  visible to every grid token. It is ``jaxtok.nn.masks.steps`` over the step ids.
* **Dimension-oriented heads** (§3.3): one head per axis predicts the next token along that axis
  (the backbone's own head for the last axis, "horizontal"; ``ModelConfig.extra_heads[a]`` for
  axis a < P - 1). The paper stacks one extra transformer block under each extra head; here the
  extra heads are linear unembeddings of the shared final hidden state.
* **Logit mixing** (eq. 3): the logits of target c are the mean over axes a with c_a > 0 of
  head_a(h[c - e_a]); the origin takes the mean of every head at the last condition token. The
  loss is cross-entropy of these mixed logits, as in the paper's code.

The raster-order AR baseline is the same machinery with one token per step, the causal mask and
the backbone head of the previous raster token (``raster_order``); both orders train on the same
batches through the one train step (``jaxtok.nar.loss``) and decode through the same cached loop
(``jaxtok.nar.decode``).
"""
from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, Bool, Float, Int

from jaxtok.config import require
from jaxtok.nn import masks
from jaxtok.nn.config import ModelConfig


@dataclasses.dataclass(frozen=True, eq=False)
class GridOrder:
  """A generation order over a grid of ``shape`` after ``n_cond`` condition tokens (static
  numpy tables; hashed by identity, so build it once with ``nar_order`` / ``raster_order``).

  Sequence (length L = C + N): condition tokens, then the grid in raster order.
  step_L: generation step of each sequence element (condition k: k - C < 0; grid: >= 0).
  pos_LxP: RoPE coordinates (condition k: (k, ..., k); grid c: c + C).
  src_NxH / valid_NxH: for each grid target n and head h (h = axis; H - 1 is the backbone head),
    the sequence index whose head-h output predicts n, and whether that neighbour exists.
  slot_SxW / slot_valid_SxW: raster index of the tokens of each step, padded to the widest step
    (W) with N (static shapes under jit).
  first_src_WxH: sources of step 0's targets in the condition block; next_src_SxWxH: sources of
    step s + 1's targets among step s's slots (row S - 1 unused); *_valid: the neighbour exists.
  """
  kind: str
  shape: tuple[int, ...]
  n_cond: int
  step_L: np.ndarray
  pos_LxP: np.ndarray
  src_NxH: np.ndarray
  valid_NxH: np.ndarray
  slot_SxW: np.ndarray
  slot_valid_SxW: np.ndarray
  first_src_WxH: np.ndarray
  first_valid_WxH: np.ndarray
  next_src_SxWxH: np.ndarray
  next_valid_SxWxH: np.ndarray

  @property
  def n_tokens(self) -> int:
    return int(np.prod(self.shape))

  @property
  def seq_len(self) -> int:
    return self.n_cond + self.n_tokens

  @property
  def n_steps(self) -> int:
    return self.slot_SxW.shape[0]

  @property
  def width(self) -> int:
    return self.slot_SxW.shape[1]

  @property
  def n_axes(self) -> int:
    return len(self.shape)

  @property
  def heads_used(self) -> tuple[int, ...]:
    return tuple(int(h) for h in np.flatnonzero(self.valid_NxH.any(0)))


def _check_shape(shape, n_cond):
  shape = tuple(int(s) for s in shape)
  require(len(shape) >= 1 and all(s >= 1 for s in shape), "shape",
          "a tuple of positive grid sizes", shape)
  require(n_cond >= 1, "n_cond", ">= 1 (the first token is predicted from a condition token)",
          n_cond)
  return shape


def _build(kind: str, shape: tuple[int, ...], n_cond: int) -> GridOrder:
  n, p = int(np.prod(shape)), len(shape)
  coords_NxP = np.stack(np.unravel_index(np.arange(n), shape), -1).astype(np.int32)
  steps_N = coords_NxP.sum(1) if kind == "nar" else np.arange(n)
  src_NxH = np.zeros((n, p), np.int32)
  valid_NxH = np.zeros((n, p), bool)
  if kind == "nar":
    for a in range(p):
      prev_NxP = coords_NxP.copy()
      prev_NxP[:, a] -= 1
      valid_NxH[:, a] = coords_NxP[:, a] > 0
      src_NxH[:, a] = np.where(valid_NxH[:, a],
                               n_cond + np.ravel_multi_index(tuple(np.maximum(prev_NxP, 0).T),
                                                             shape), 0)
    valid_NxH[0] = True  # the origin: every head at the last condition token
    src_NxH[0] = n_cond - 1
  else:
    valid_NxH[:, p - 1] = True
    src_NxH[:, p - 1] = n_cond - 1 + np.arange(n)
  n_steps = int(steps_N.max()) + 1
  members = [np.flatnonzero(steps_N == s) for s in range(n_steps)]
  w = max(len(m) for m in members)
  slot_SxW = np.full((n_steps, w), n, np.int32)
  slot_of_N = np.zeros(n, np.int32)
  for s, m in enumerate(members):
    slot_SxW[s, :len(m)] = m
    slot_of_N[m] = np.arange(len(m))
  next_src = np.zeros((n_steps, w, p), np.int32)
  next_valid = np.zeros((n_steps, w, p), bool)
  first_src = np.zeros((w, p), np.int32)
  first_valid = np.zeros((w, p), bool)
  for s, m in enumerate(members):
    for slot, tgt in enumerate(m):
      for h in np.flatnonzero(valid_NxH[tgt]):
        src = src_NxH[tgt, h] - n_cond
        if s == 0:
          assert src < 0, "step-0 targets are predicted from the condition block"
          first_src[slot, h], first_valid[slot, h] = src_NxH[tgt, h], True
        else:
          assert steps_N[src] == s - 1, "a target's neighbours are in the previous step"
          next_src[s - 1, slot, h], next_valid[s - 1, slot, h] = slot_of_N[src], True
  step_L = np.concatenate([np.arange(n_cond) - n_cond, steps_N]).astype(np.int32)
  pos_LxP = np.concatenate([np.repeat(np.arange(n_cond)[:, None], p, 1),
                            coords_NxP + n_cond]).astype(np.int32)
  return GridOrder(kind, shape, n_cond, step_L, pos_LxP, src_NxH, valid_NxH, slot_SxW,
                   slot_SxW < n, first_src, first_valid, next_src, next_valid)


@functools.lru_cache(maxsize=64)
def nar_order(shape: tuple[int, ...], n_cond: int = 1) -> GridOrder:
  """Next-neighbour order: step d = the tokens at Manhattan distance d from the origin."""
  return _build("nar", _check_shape(shape, n_cond), n_cond)


@functools.lru_cache(maxsize=64)
def raster_order(shape: tuple[int, ...], n_cond: int = 1) -> GridOrder:
  """Raster-scan AR (LlamaGen): one token per step, predicted by the backbone head of the
  previous raster token (the last condition token for the first)."""
  return _build("raster", _check_shape(shape, n_cond), n_cond)


def manhattan_order(shape: tuple[int, ...]) -> Int[np.ndarray, "N"]:
  """Raster indices in NAR generation order (by distance, then raster)."""
  order = nar_order(tuple(shape))
  return order.slot_SxW[order.slot_valid_SxW]


def nar_schedule(shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
  """(raster index i32[S, W] padded with -1, valid bool[S, W]): the padded diagonals."""
  order = nar_order(tuple(shape))
  return np.where(order.slot_valid_SxW, order.slot_SxW, -1), order.slot_valid_SxW


def grid_model_config(shape: tuple[int, ...], vocab_size: int, **kwargs) -> ModelConfig:
  """The backbone for a grid: N-D RoPE over its P axes and P - 1 extra (axis) heads. The raster
  baseline uses the same config (same size; it reads only the backbone head)."""
  p = len(shape)
  return ModelConfig(vocab_size=vocab_size, rope_axes=p, extra_heads=(vocab_size,) * (p - 1),
                     max_len=kwargs.pop("max_len", 2 * int(np.prod(shape)) + 64), **kwargs)


def order_mask(order: GridOrder, batch: int = 1) -> Bool[Array, "B L L"]:
  """The proximity-aware mask of the whole sequence (causal for the raster order)."""
  return masks.steps(jnp.broadcast_to(jnp.asarray(order.step_L), (batch, order.seq_len)))


def check_heads(cfg: ModelConfig, order: GridOrder) -> None:
  """The model has the heads the order reads and N-D RoPE over the grid's axes."""
  p = order.n_axes
  if any(h < p - 1 for h in order.heads_used) and len(cfg.extra_heads) < p - 1:
    raise ValueError(f"model.extra_heads: the {order.kind} order over a {p}-D grid needs "
                     f"{p - 1} extra heads, the model has {len(cfg.extra_heads)}")
  if cfg.positions == "rope" and cfg.rope_axes != p:
    raise ValueError(f"model.rope_axes: a {p}-D grid needs rope_axes={p}, got {cfg.rope_axes}")


def head_logits(out, order: GridOrder) -> tuple:
  """Per-axis head logits in axis order (extra heads, then the backbone head); None for heads
  the order never reads."""
  p = order.n_axes
  return tuple((out.logits if h == p - 1 else out.extra_logits[h]) if h in order.heads_used
               else None for h in range(p))


def mix_weights(valid_NxH: np.ndarray, src_NxH: np.ndarray, n_cond: int,
                head: int | None = None) -> np.ndarray:
  """Averaging weights f32[N, H] over available neighbours (eq. 3). ``head`` (Table 5): where
  two or more neighbours overlap, use that head alone (the origin and borders stay mixed)."""
  w_NxH = valid_NxH.astype(np.float32)
  if head is not None:
    overlap_N = (valid_NxH.sum(1) > 1) & (src_NxH.max(1) >= n_cond)
    w_NxH = np.where(overlap_N[:, None], np.eye(valid_NxH.shape[1], dtype=np.float32)[head],
                     w_NxH)
  return w_NxH / w_NxH.sum(1, keepdims=True)


def mix_neighbor_logits(heads: tuple, src_NxH: np.ndarray, w_NxH: np.ndarray,
                        grid_vocab: int) -> Float[Array, "B N V"]:
  """Mixed logits of N targets: sum_h w[n, h] * heads[h][:, src[n, h], :grid_vocab]."""
  total = None
  for h, logits_BxLxV in enumerate(heads):
    if logits_BxLxV is None or not w_NxH[:, h].any():
      continue
    g_BxNxV = jnp.take(logits_BxLxV[..., :grid_vocab], jnp.asarray(src_NxH[:, h]), axis=1)
    term = g_BxNxV * jnp.asarray(w_NxH[:, h])[None, :, None]
    total = term if total is None else total + term
  return total
