"""Transformer building blocks: RMSNorm, SwiGLU MLP, GQA attention (Flax NNX).

Every parameter carries ``logical_axes`` metadata; jaxtok.sharding maps those names to mesh axes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.cache import write_kv
from jaxtok.nn import attention as attn_lib
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.rope import apply_rope


def param(rngs: nnx.Rngs, shape, std: float, axes: tuple[str | None, ...]) -> nnx.Param:
  init = jax.nn.initializers.truncated_normal(std)
  return nnx.Param(init(rngs.params(), shape, jnp.float32), logical_axes=axes)


def _project(x_NxD, w_DxHxDh):
  return x_NxD @ w_DxHxDh.reshape(w_DxHxDh.shape[0], -1)


class RMSNorm(nnx.Module):
  def __init__(self, d: int, eps: float):
    self.scale = nnx.Param(jnp.ones((d,), jnp.float32), logical_axes=("norm",))
    self.eps = eps

  def __call__(self, x_BxTxD):
    x = x_BxTxD.astype(jnp.float32)  # fp32 statistics even in bf16 compute
    y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (y * self.scale[...]).astype(x_BxTxD.dtype)


class MLP(nnx.Module):
  """SwiGLU (Shazeer 2020, arXiv 2002.05202)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, f = cfg.d_model, cfg.d_ff
    out_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
    self.w_gate = param(rngs, (d, f), cfg.init_std, ("embed", "mlp"))
    self.w_up = param(rngs, (d, f), cfg.init_std, ("embed", "mlp"))
    self.w_down = param(rngs, (f, d), out_std, ("mlp", "embed"))

  def __call__(self, x_BxTxD):
    dt = x_BxTxD.dtype
    # Rows flattened to [B*T, D]: 2-D matmuls (and their transposes in the backward pass) run
    # ~25% faster on XLA CPU than the same contraction written over (b, t).
    x_NxD = x_BxTxD.reshape(-1, x_BxTxD.shape[-1])
    gate_NxF = x_NxD @ self.w_gate[...].astype(dt)
    up_NxF = x_NxD @ self.w_up[...].astype(dt)
    out_NxD = (jax.nn.silu(gate_NxF) * up_NxF) @ self.w_down[...].astype(dt)
    return out_NxD.reshape(x_BxTxD.shape)


class Attention(nnx.Module):
  """Multi-head attention with grouped KV heads (Ainslie et al. 2023, arXiv 2305.13245)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, h, k, dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh
    self.cfg = cfg
    self.wq = param(rngs, (d, h, dh), cfg.init_std, ("embed", "heads", "head_dim"))
    self.wk = param(rngs, (d, k, dh), cfg.init_std, ("embed", "kv_heads", "head_dim"))
    self.wv = param(rngs, (d, k, dh), cfg.init_std, ("embed", "kv_heads", "head_dim"))
    self.wo = param(rngs, (h, dh, d), cfg.init_std / math.sqrt(2 * cfg.n_layers),
                    ("heads", "head_dim", "embed"))

  def __call__(self, x_BxTxD, angles_BxTxDh2, mask, layer_cache):
    """Returns (out, this layer's cache with the block written at ``length``, or None).

    ``layer_cache`` is None or (k_BxKxSxDh, v_BxKxSxDh, length_B, empty); ``empty`` (static)
    says no slot is visible, so the block attends to itself alone.
    """
    dt = x_BxTxD.dtype
    b, t, d = x_BxTxD.shape
    # 2-D matmuls over [B*T, D] rows and [D, heads*Dh] weights (see MLP); the parameters keep
    # their [D, H, Dh] shapes for checkpoints and model import.
    x_NxD = x_BxTxD.reshape(b * t, d)
    q_BxTxHxDh = _project(x_NxD, self.wq[...].astype(dt)).reshape(b, t, *self.wq.shape[1:])
    k_BxTxKxDh = _project(x_NxD, self.wk[...].astype(dt)).reshape(b, t, *self.wk.shape[1:])
    v_BxTxKxDh = _project(x_NxD, self.wv[...].astype(dt)).reshape(b, t, *self.wv.shape[1:])
    if angles_BxTxDh2 is not None:
      q_BxTxHxDh = apply_rope(q_BxTxHxDh, angles_BxTxDh2)
      k_BxTxKxDh = apply_rope(k_BxTxKxDh, angles_BxTxDh2)
    if layer_cache is None:
      o_BxTxHxDh = attn_lib.attention(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, mask)
      kv_cache = None
    else:
      k_cache, v_cache, length_B, empty = layer_cache
      # Write first, then attend over the written arrays (slots >= length are not visible as
      # cache slots; the block is seen through k/v_new under the mask), and keep the write one
      # buffer (the barrier). A read of the old cache beside the write, or the write duplicated
      # into both consumers (XLA does that at batch 1), made XLA copy every layer's cache on
      # every decode step (tests/test_decode.py checks the compiled loop).
      kv_cache = jax.lax.optimization_barrier((write_kv(k_cache, k_BxTxKxDh, length_B),
                                               write_kv(v_cache, v_BxTxKxDh, length_B)))
      if empty:  # nothing in the cache is visible: the block attends to itself alone
        o_BxTxHxDh = attn_lib.attention(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, mask)
      else:
        o_BxTxHxDh = attn_lib.cached_attention(q_BxTxHxDh, *kv_cache, length_B, k_BxTxKxDh,
                                               v_BxTxKxDh, mask)
    h, dh = self.wo.shape[:2]
    out_NxD = o_BxTxHxDh.astype(dt).reshape(b * t, h * dh) @ self.wo[...].astype(dt).reshape(
        h * dh, d)
    return out_NxD.reshape(b, t, d), kv_cache
