"""Transformer building blocks: RMSNorm, SwiGLU MLP, GQA attention (Flax NNX).

Every parameter carries ``logical_axes`` metadata; jaxtok.sharding maps those names to mesh axes.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx, struct

from jaxtok.cache import LayerKV, write_block
from jaxtok.nn import attention as attn_lib
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.rope import apply_rope


def param(rngs: nnx.Rngs, shape, std: float, axes: tuple[str | None, ...]) -> nnx.Param:
  init = jax.nn.initializers.truncated_normal(std)
  return nnx.Param(init(rngs.params(), shape, jnp.float32), logical_axes=axes)


# XLA:CPU lowers a bf16 product with fewer than 8 rows as convert-to-fp32 + an fp32
# matrix-vector product (4-9x slower than fp32; scripts/bf16_dots.py); from 8 rows it runs a
# bf16 (AMX) kernel, faster than fp32 even at 8. Batch-1 decoding pads its rows to 8.
_MIN_BF16_ROWS = 8


def pad_bf16_rows(x_NxD):
  """Fewer than 8 bf16 rows padded with zeros to 8 (see _MIN_BF16_ROWS); else unchanged."""
  n = x_NxD.shape[0]
  if x_NxD.dtype != jnp.bfloat16 or n >= _MIN_BF16_ROWS:
    return x_NxD
  return jnp.pad(x_NxD, ((0, _MIN_BF16_ROWS - n), (0, 0)))


def matmul(x_NxD, w_DxF, preferred_element_type=None):
  """x @ w over 2-D rows, through the padded bf16 rows (sliced back to N)."""
  out = jnp.dot(pad_bf16_rows(x_NxD), w_DxF, preferred_element_type=preferred_element_type)
  return out[:x_NxD.shape[0]]


def _project(x_NxD, w_DxHxDh):
  return matmul(x_NxD, w_DxHxDh.reshape(w_DxHxDh.shape[0], -1))


class RMSNorm(nnx.Module):
  def __init__(self, d: int, eps: float):
    self.scale = nnx.Param(jnp.ones((d,), jnp.float32), logical_axes=("norm",))
    self.eps = eps

  def __call__(self, x_BxTxD):
    x = x_BxTxD.astype(jnp.float32)  # fp32 statistics even in bf16 compute
    y = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    scale = self.scale[...].reshape((1,) * (y.ndim - 1) + (-1,))  # rank-matched broadcast
    return (y * scale).astype(x_BxTxD.dtype)


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
    gate_NxF = matmul(x_NxD, self.w_gate[...].astype(dt))
    up_NxF = matmul(x_NxD, self.w_up[...].astype(dt))
    out_NxD = matmul(jax.nn.silu(gate_NxF) * up_NxF, self.w_down[...].astype(dt))
    return out_NxD.reshape(x_BxTxD.shape)


class Attention(nnx.Module):
  """Multi-head attention with grouped KV heads (Ainslie et al. 2023, arXiv 2305.13245)."""

  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    d, h, k, dh = cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh
    self.implementation = cfg.attention_impl
    self.wq = param(rngs, (d, h, dh), cfg.init_std, ("embed", "heads", "head_dim"))
    self.wk = param(rngs, (d, k, dh), cfg.init_std, ("embed", "kv_heads", "head_dim"))
    self.wv = param(rngs, (d, k, dh), cfg.init_std, ("embed", "kv_heads", "head_dim"))
    self.wo = param(rngs, (h, dh, d), cfg.init_std / math.sqrt(2 * cfg.n_layers),
                    ("heads", "head_dim", "embed"))

  def __call__(self, x_BxTxD, angles_BxTxDh2, mask, layer: LayerKV | None, pos_BxT, *,
               fresh_cache: bool, return_stats: bool) -> LayerOutput:
    """The block's attention output; with a cache, the layer with the block written at
    ``length`` (uncommitted). ``fresh_cache`` (static): the cache is fresh from init_cache
    (no slot filled), so the block attends to itself alone and the S empty slots are never
    scored."""
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
    written = None
    # A fresh cache lets a short block attend to itself alone; a long causal one still goes
    # through the cache, chunk by chunk (linear memory, the kernel on TPU/GPU).
    self_only = layer is None or (fresh_cache and not attn_lib.is_long_causal(mask, t))
    if self_only:
      res = attn_lib.attention(q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, mask, return_lse=return_stats)
    if layer is not None:
      # Write first, then attend over the written arrays, and keep the write one buffer (the
      # barrier): otherwise XLA copies every layer's cache per decode step
      # (tests/test_decode.py checks the compiled loop).
      written = jax.lax.optimization_barrier(write_block(layer, k_BxTxKxDh, v_BxTxKxDh, pos_BxT))
      if not self_only:
        res = attn_lib.attend_layer(written, q_BxTxHxDh, k_BxTxKxDh, v_BxTxKxDh, mask,
                                    return_lse=return_stats, implementation=self.implementation)
    o_BxTxHxDh, residual = res if return_stats else (res, None)
    stats = None
    if return_stats:
      # Without a cache the block's own keys are the slots; a fresh cache holds only the block.
      keys_BxKxSxDh, start_BxK = ((jnp.swapaxes(k_BxTxKxDh, 1, 2),
                                   jnp.zeros((b, k_BxTxKxDh.shape[2]), jnp.int32))
                                  if layer is None else (written.k, layer.length))
      stats = attn_lib.slot_stats(q_BxTxHxDh, keys_BxKxSxDh, start_BxK, mask, pos_BxT >= 0,
                                  residual)
    h, dh = self.wo.shape[:2]
    out_NxD = matmul(o_BxTxHxDh.astype(dt).reshape(b * t, h * dh),
                     self.wo[...].astype(dt).reshape(h * dh, d))
    return LayerOutput(out_BxTxD=out_NxD.reshape(b, t, d), layer=written,
                       k_BxTxKxDh=k_BxTxKxDh, v_BxTxKxDh=v_BxTxKxDh, stats=stats)


@struct.dataclass
class LayerOutput:
  out_BxTxD: jax.Array
  layer: LayerKV | None  # the cache layer with the block written (None without a cache)
  k_BxTxKxDh: jax.Array  # the block's keys (post-RoPE) and values
  v_BxTxKxDh: jax.Array
  stats: attn_lib.AttnStats | None
