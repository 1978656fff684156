"""Transformer building blocks: RMSNorm, SwiGLU MLP, GQA attention (Flax NNX).

Every parameter carries ``logical_axes`` metadata; jaxtok.sharding maps those names to mesh axes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxtok.nn import attention as attn_lib
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.rope import apply_rope


def param(rngs: nnx.Rngs, shape, std: float, axes: tuple[str | None, ...]) -> nnx.Param:
  init = jax.nn.initializers.truncated_normal(std)
  return nnx.Param(init(rngs.params(), shape, jnp.float32), logical_axes=axes)


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
    gate_BxTxF = jnp.einsum("btd,df->btf", x_BxTxD, self.w_gate[...].astype(dt))
    up_BxTxF = jnp.einsum("btd,df->btf", x_BxTxD, self.w_up[...].astype(dt))
    return jnp.einsum("btf,fd->btd", jax.nn.silu(gate_BxTxF) * up_BxTxF,
                      self.w_down[...].astype(dt))


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
    """``layer_cache`` is None or (k_BxSxKxDh, v_BxSxKxDh, length_B); returns (out, new k, v)."""
    dt = x_BxTxD.dtype
    q_BxTxHxDh = jnp.einsum("btd,dhe->bthe", x_BxTxD, self.wq[...].astype(dt))
    k_BxTxKxDh = jnp.einsum("btd,dke->btke", x_BxTxD, self.wk[...].astype(dt))
    v_BxTxKxDh = jnp.einsum("btd,dke->btke", x_BxTxD, self.wv[...].astype(dt))
    if angles_BxTxDh2 is not None:
      q_BxTxHxDh = apply_rope(q_BxTxHxDh, angles_BxTxDh2)
      k_BxTxKxDh = apply_rope(k_BxTxKxDh, angles_BxTxDh2)
    if layer_cache is None:
      o_BxTxHxDh = attn_lib.attention(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, mask)
    else:
      k_cache, v_cache, length_B = layer_cache
      o_BxTxHxDh = attn_lib.cached_attention(q_BxTxHxDh, k_cache, v_cache, length_B,
                                             k_BxTxKxDh, v_BxTxKxDh, mask)
    out_BxTxD = jnp.einsum("bthe,hed->btd", o_BxTxHxDh.astype(dt), self.wo[...].astype(dt))
    return out_BxTxD, k_BxTxKxDh, v_BxTxKxDh
