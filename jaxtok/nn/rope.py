"""Rotary position embeddings over 1-D or N-D integer coordinates (Su et al., arXiv 2104.09864).

Pairs dimension i with i + Dh/2 ("rotate-half" layout, as Hugging Face Llama); GGUF files store
Q/K rows interleaved and are permuted on import (jaxtok.models). For N-D coordinates the Dh/2
frequency pairs are split evenly between the P axes, each axis rotating its own block.
"""
from __future__ import annotations

import jax.numpy as jnp
from jaxtyping import Array, Float, Int


def rope_angles(positions: Int[Array, "B T *P"], head_dim: int, theta: float,
                n_axes: int) -> Float[Array, "B T Dh2"]:
  pos_BxTxP = positions if positions.ndim == 3 else positions[..., None]
  if pos_BxTxP.shape[-1] != n_axes:
    raise ValueError(f"positions: expected {n_axes} coordinate axes (model.rope_axes), got "
                     f"shape {positions.shape}")
  per_axis = head_dim // 2 // n_axes
  inv_freq = theta ** (-jnp.arange(per_axis, dtype=jnp.float32) * 2 / (2 * per_axis))
  angles = pos_BxTxP.astype(jnp.float32)[..., None] * inv_freq[None, None, None]  # B T P per_axis
  return angles.reshape(*angles.shape[:2], -1)


def apply_rope(x_BxTxHxDh: Float[Array, "B T H Dh"],
               angles_BxTxDh2: Float[Array, "B T Dh2"]) -> Float[Array, "B T H Dh"]:
  cos = jnp.cos(angles_BxTxDh2)[:, :, None, :]
  sin = jnp.sin(angles_BxTxDh2)[:, :, None, :]
  x = x_BxTxHxDh.astype(jnp.float32)
  x1, x2 = jnp.split(x, 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxTxHxDh.dtype)
