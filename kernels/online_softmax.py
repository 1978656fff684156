"""FlashAttention-2's online softmax (Dao, arXiv 2307.08691, Algorithm 1), once per backend.

Over the key blocks of a row of queries the kernels keep the running max m, the running sum l
of exp(s - m) and the unnormalised output acc; a block of scores s (fp32, already scaled by
1/sqrt(Dh)) and values v folds in as

    m' = max(m, max_n s_n)    alpha = exp(m - m')    p_n = exp(s_n - m')  (0 where masked)
    l' = alpha l + sum_n p_n                          acc' = alpha acc + p @ v

and the last block finishes with out = acc / l (0 where nothing was visible) and the residual
lse = m + log l (numerics.lse). Masked scores become MASKED, so a row that has seen nothing
keeps m = MASKED and no inf - inf appears.

* Mosaic (TPU, ``tpu_*``): the state lives in VMEM scratch across grid steps. m and l are
  lane-replicated (rows, 128): a (rows, 1) f32 buffer would be padded to a full lane tile
  anyway, and the replicated form keeps every access lane-aligned.
* Triton (GPU, ``triton_*``): the state is the carry of a ``fori_loop`` over key blocks.

Used by tree attention and selected attention (their tpu.py and gpu.py).
"""
from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.experimental.pallas import tpu as pltpu

from jaxtok_kernels import tiling
from jaxtok_kernels.numerics import MASKED, lse

STAT_LANES = tiling.TPU_LANES


def tpu_scratch(rows: int, head_dim: int, *lead: int):
  """VMEM scratch shapes of (m, l, acc) for `rows` query rows, behind optional leading axes."""
  return [pltpu.VMEM((*lead, rows, STAT_LANES), jnp.float32),
          pltpu.VMEM((*lead, rows, STAT_LANES), jnp.float32),
          pltpu.VMEM((*lead, rows, head_dim), jnp.float32)]


def tpu_init(m_scr, l_scr, acc_scr):
  m_scr[...] = jnp.full(m_scr.shape, MASKED, jnp.float32)
  l_scr[...] = jnp.zeros(l_scr.shape, jnp.float32)
  acc_scr[...] = jnp.zeros(acc_scr.shape, jnp.float32)


def tpu_scores(q_RxDh, k_NxDh, scale):
  """fp32 q k^T * scale without materialising k^T: both head dims are contracted (an "NT"
  matmul on the MXU)."""
  s_RxN = lax.dot_general(q_RxDh, k_NxDh, (((1,), (1,)), ((), ())),
                          preferred_element_type=jnp.float32)
  return s_RxN * scale


def tpu_update(m_scr, l_scr, acc_scr, s_RxN, vis_RxN, v_NxDh, at=...):
  """Folds scores s (visible where vis) and values v into the state at index `at` of the
  scratch (one kv head of a leading axis, or, by default, all of it)."""
  m_lanes = m_scr[at]
  m_prev, l_prev = m_lanes[:, :1], l_scr[at][:, :1]
  s_RxN = jnp.where(vis_RxN, s_RxN, MASKED)
  m_new = jnp.maximum(m_prev, jnp.max(s_RxN, axis=1, keepdims=True))
  p_RxN = jnp.where(vis_RxN, jnp.exp(s_RxN - m_new), 0.0)
  alpha = jnp.exp(m_prev - m_new)
  l_scr[at] = jnp.broadcast_to(alpha * l_prev + jnp.sum(p_RxN, axis=1, keepdims=True),
                               m_lanes.shape)
  m_scr[at] = jnp.broadcast_to(m_new, m_lanes.shape)
  # p in the value dtype: bf16 operands keep the MXU at full rate; the sum stays fp32.
  pv_RxDh = lax.dot_general(p_RxN.astype(v_NxDh.dtype), v_NxDh, (((1,), (0,)), ((), ())),
                            preferred_element_type=jnp.float32)
  acc_scr[at] = alpha * acc_scr[at] + pv_RxDh


def tpu_finish(m_scr, l_scr, acc_scr, o_ref, lse_ref=None, at=...):
  """Writes out = acc / l at index `at` and, when `lse_ref` is given, the lane-replicated
  residual."""
  l_lanes = l_scr[at]
  l = l_lanes[:, :1]
  o_ref[at] = (acc_scr[at] * jnp.where(l > 0, 1.0 / l, 0.0)).astype(o_ref.dtype)
  if lse_ref is not None:
    lse_ref[at] = lse(m_scr[at], l_lanes)


def triton_init(rows: int, head_dim: int):
  """The carry (m f32[R], l f32[R], acc f32[R, Dh]) before the first key block."""
  return (jnp.full((rows,), MASKED, jnp.float32), jnp.zeros((rows,), jnp.float32),
          jnp.zeros((rows, head_dim), jnp.float32))


def triton_scores(q_RxDh, k_NxDh, scale):
  return jnp.dot(q_RxDh, k_NxDh.T, preferred_element_type=jnp.float32) * scale


def triton_update(carry, s_RxN, vis_RxN, v_NxDh):
  """The carry with scores s (visible where vis) and values v folded in."""
  m_prev, l_prev, acc_RxDh = carry
  s_RxN = jnp.where(vis_RxN, s_RxN, MASKED)
  m_new = jnp.maximum(m_prev, jnp.max(s_RxN, axis=1))
  p_RxN = jnp.where(vis_RxN, jnp.exp(s_RxN - m_new[:, None]), 0.0)
  alpha = jnp.exp(m_prev - m_new)
  l_new = alpha * l_prev + jnp.sum(p_RxN, axis=1)
  pv_RxDh = jnp.dot(p_RxN.astype(v_NxDh.dtype), v_NxDh, preferred_element_type=jnp.float32)
  return m_new, l_new, alpha[:, None] * acc_RxDh + pv_RxDh


def triton_finish(carry, o_ref, lse_ref=None):
  """Writes out = acc / l and, when `lse_ref` is given, the residual."""
  m, l, acc_RxDh = carry
  o_ref[...] = (acc_RxDh * jnp.where(l > 0, 1.0 / l, 0.0)[:, None]).astype(o_ref.dtype)
  if lse_ref is not None:
    lse_ref[...] = lse(m, l)
