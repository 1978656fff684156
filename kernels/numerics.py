"""The numerics every attention op shares (references and kernels): the mask value, the softmax
residual, and the tolerance of a kernel-vs-reference comparison. Nothing here calls JAX at
import time."""
from __future__ import annotations

import math

import jax.numpy as jnp

# The one mask value of every attention op: finite, because -inf would turn a fully masked row
# into NaN (inf - inf) before it is zeroed.
MASKED = -1e30

# Base absolute tolerance of a kernel-vs-reference comparison for one reduction of length 1.
# f32 runs in interpret mode agree to ~1e-7; bf16 rounds inputs and p to 8 mantissa bits.
_BASE_TOL = {jnp.dtype(jnp.float32): 1e-5, jnp.dtype(jnp.bfloat16): 2e-2,
             jnp.dtype(jnp.float16): 5e-3}


def lse(m, l):
  """The softmax residual log sum_n exp(s_n) = m + log l from a softmax's max m and its sum
  l = sum_n exp(s_n - m) (FlashAttention's, arXiv 2307.08691 Algorithm 1 line 13); MASKED where
  nothing was visible (l = 0). The clamp keeps log and its gradient finite on that branch."""
  return jnp.where(l > 0, m + jnp.log(jnp.maximum(l, 1e-30)), MASKED)


def tolerance(dtype, reduction_size: int = 1) -> float:
  """Absolute tolerance for comparing a kernel with its reference.

  Rounding error of a length-n reduction grows like sqrt(n) for random-sign terms, so the base
  tolerance ({f32: 1e-5, bf16: 2e-2}) is scaled by max(1, sqrt(n / 128)): reductions up to one
  lane tile keep the base value.
  """
  base = _BASE_TOL.get(jnp.dtype(dtype))
  if base is None:
    raise ValueError(f"tolerance: no base tolerance for dtype {dtype}")
  return base * max(1.0, math.sqrt(reduction_size / 128))
