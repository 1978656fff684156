"""jaxtok's one decoder-style transformer (Flax NNX), configurable where the papers differ.

Pre-norm blocks (RMSNorm, GQA attention, SwiGLU) as in Llama (arXiv 2302.13971); embeddings are a
learned table or vectors the caller supplies per sequence (lexinvariant LMs, arXiv 2305.16349);
positions are RoPE over 1-D/N-D coordinates, a learned table, or none.

Pure entry point: ``graphdef, params = nnx.split(model)`` once, then
``forward(graphdef, params, tokens, positions, mask)`` inside ``jax.jit``.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

from jaxtok.cache import KVCache, write_block
from jaxtok.nn import masks
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.layers import MLP, Attention, RMSNorm, param
from jaxtok.nn.rope import rope_angles


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x_BxTxD, angles, mask, layer_cache):
    a_BxTxD, kv_cache = self.attn(self.attn_norm(x_BxTxD), angles, mask, layer_cache)
    x_BxTxD = x_BxTxD + a_BxTxD
    return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD)), kv_cache


class Transformer(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d = cfg.d_model
    if cfg.embedding == "learned":
      self.embed = param(rngs, (cfg.vocab_size, d), cfg.init_std, ("vocab", "embed"))
    if cfg.positions == "learned":
      self.pos_embed = param(rngs, (cfg.max_len, d), cfg.init_std, ("pos", "embed"))
    self.blocks = nnx.List([Block(cfg, rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(d, cfg.norm_eps)
    if not cfg.tie_embeddings:
      self.unembed = param(rngs, (d, cfg.vocab_size), cfg.init_std, ("embed", "vocab"))
    self.extra_heads = nnx.List(
        [param(rngs, (d, v), cfg.init_std, ("embed", "vocab")) for v in cfg.extra_heads])

  def __call__(
      self, tokens_BxT: Int[Array, "B T"], positions: Int[Array, "B T *P"],
      mask: Bool[Array, "B T S"] | None = None, *,
      embeddings_BxTxD: Float[Array, "B T D"] | None = None, cache: KVCache | None = None,
      logits_at_BxN: Int[Array, "B N"] | None = None,
  ) -> tuple[Float[Array, "B T V"] | tuple[Float[Array, "B T _"], ...], KVCache | None]:
    """Returns (logits, cache). Logits are fp32; with extra heads, a tuple (main, *extra).

    ``logits_at_BxN`` unembeds only those positions (logits [B, N, V]): prefill needs one row per
    prompt, and the full [B, T, V] fp32 logits of a large vocabulary cost more than the layers.

    Without a cache ``mask`` is [B, T, T] (default causal). With a cache the new block attends to
    every cache slot ``< cache.length`` plus itself under ``mask`` (default causal); the block is
    written at ``cache.length`` and ``length`` advances by the tokens with position >= 0 (padding
    carries position -1 and must come last).
    """
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    b, t = tokens_BxT.shape
    if positions.shape[:2] != (b, t):
      raise ValueError(f"positions: expected leading shape {(b, t)}, got {positions.shape}")
    if cfg.embedding == "learned":
      x_BxTxD = jnp.take(self.embed[...], tokens_BxT, axis=0)
    else:
      if embeddings_BxTxD is None or embeddings_BxTxD.shape != (b, t, cfg.d_model):
        raise ValueError(f"embeddings_BxTxD: model.embedding='external' needs shape "
                         f"{(b, t, cfg.d_model)}, got "
                         f"{None if embeddings_BxTxD is None else embeddings_BxTxD.shape}")
      x_BxTxD = embeddings_BxTxD
    order_BxT = positions if positions.ndim == 2 else positions[..., 0]
    if cfg.positions == "learned":
      x_BxTxD = x_BxTxD + jnp.take(self.pos_embed[...], jnp.maximum(order_BxT, 0), axis=0)
    angles = (rope_angles(positions, cfg.dh, cfg.rope_theta, cfg.rope_axes)
              if cfg.positions == "rope" else None)
    if mask is None:
      mask = masks.causal(t, b)
    x_BxTxD = x_BxTxD.astype(dt)

    written = []
    for i, block in enumerate(self.blocks):
      # cache.k[i], cache.v[i]: this layer's own [B, K, S, Dh] arrays (no slice, no copy).
      layer_cache = (None if cache is None else
                     (cache.k[i], cache.v[i], cache.length, cache.empty))
      x_BxTxD, kv_cache = block(x_BxTxD, angles, mask, layer_cache)
      written.append(kv_cache)

    if logits_at_BxN is not None:
      x_BxTxD = jnp.take_along_axis(x_BxTxD, logits_at_BxN[..., None], axis=1)
    h_BxTxD = self.final_norm(x_BxTxD)
    # Tied: contract with the [V, D] table directly (a transposed copy would be re-made per call).
    logits = (jnp.einsum("btd,vd->btv", h_BxTxD, self.embed[...].astype(dt),
                         preferred_element_type=jnp.float32) if cfg.tie_embeddings else
              jnp.einsum("btd,dv->btv", h_BxTxD, self.unembed[...].astype(dt),
                         preferred_element_type=jnp.float32))
    if cfg.extra_heads:
      logits = (logits, *(jnp.einsum("btd,dv->btv", h_BxTxD, w[...].astype(dt),
                                     preferred_element_type=jnp.float32)
                          for w in self.extra_heads))
    if cache is not None:
      cache = _advance(cache, written, order_BxT)
    return logits, cache


def _advance(cache: KVCache, written: list, order_BxT) -> KVCache:
  """The cache after the block: each layer's (k, v) as written by its attention, the block's
  positions at slot ``length``, and ``length`` advanced by its non-padding tokens."""
  pos = write_block(cache.pos, order_BxT.astype(jnp.int32), cache.length)
  n_valid_B = jnp.sum(order_BxT >= 0, axis=1).astype(jnp.int32)
  return cache.replace(k=tuple(k for k, _ in written), v=tuple(v for _, v in written), pos=pos,
                       length=cache.length + n_valid_B, empty=False)


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
  return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def forward(graphdef: nnx.GraphDef, params: nnx.State, tokens_BxT, positions, mask=None, *,
            embeddings_BxTxD=None, cache: KVCache | None = None, logits_at_BxN=None):
  """Pure function of (params, inputs): merges the module for the duration of one trace."""
  model = nnx.merge(graphdef, params)
  return model(tokens_BxT, positions, mask, embeddings_BxTxD=embeddings_BxTxD, cache=cache,
               logits_at_BxN=logits_at_BxN)


def default_positions(b: int, t: int) -> Int[Array, "B T"]:
  return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
