"""jaxtok's one decoder-style transformer (Flax NNX), configurable where the papers differ.

Pre-norm blocks (RMSNorm, GQA attention, SwiGLU) as in Llama (arXiv 2302.13971); embeddings are a
learned table or vectors the caller supplies per sequence (lexinvariant LMs, arXiv 2305.16349);
positions are RoPE over 1-D/N-D coordinates, a learned table, or none.

Pure entry point: ``graphdef, params = nnx.split(model, nnx.Param)`` once, then
``forward(graphdef, params, tokens, positions, mask) -> Output`` inside ``jax.jit``.
"""
from __future__ import annotations

import jax.numpy as jnp
from flax import nnx, struct
from jaxtyping import Array, Float, Int

from jaxtok.cache import KVCache
from jaxtok.nn import masks
from jaxtok.nn.attention import AttnStats
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.layers import MLP, Attention, RMSNorm, matmul, pad_bf16_rows, param
from jaxtok.nn.rope import rope_angles


@struct.dataclass
class Output:
  """What one forward returns (gemma's ``Output``): never a union of shapes.

  logits: fp32 [B, N, V] of the main head (N = T, or the N positions of ``logits_at_BxN``);
  extra_logits: one array per extra head (empty tuple without); hidden: the final-norm hidden
  states of those N positions (``return_hidden``); cache: the cache with the block written at ``length`` of every layer and
  kv head, uncommitted (``jaxtok.cache.commit`` makes it visible); kv: the block's per-layer
  (keys post-RoPE, values) [B, T, K, Dh]; stats: per-layer attention statistics
  (``return_stats``).
  """
  logits: Float[Array, "B N V"]
  extra_logits: tuple[Float[Array, "B N _"], ...] = ()
  hidden: Float[Array, "B N D"] | None = None
  cache: KVCache | None = None
  kv: tuple[tuple[Float[Array, "B T K Dh"], Float[Array, "B T K Dh"]], ...] = ()
  stats: tuple[AttnStats, ...] | None = None


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    self.attn = Attention(cfg, rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps)
    self.mlp = MLP(cfg, rngs)

  def __call__(self, x_BxTxD, angles, mask, layer, pos_BxT, **kw):
    a = self.attn(self.attn_norm(x_BxTxD), angles, mask, layer, pos_BxT, **kw)
    x_BxTxD = x_BxTxD + a.out_BxTxD
    return x_BxTxD + self.mlp(self.mlp_norm(x_BxTxD)), a


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
      mask: masks.Mask | None = None, *,
      embeddings_BxTxD: Float[Array, "B T D"] | None = None, cache: KVCache | None = None,
      fresh_cache: bool = False, logits_at_BxN: Int[Array, "B N"] | None = None,
      return_hidden: bool = False, return_stats: bool = False) -> Output:
    """One forward of a block of T tokens.

    ``mask``: bool [B, T, T] over the block, or ``masks.CAUSAL`` (the default; long causal
    blocks then attend in chunks, never building [T, T]). Without a cache the block attends to
    itself under ``mask``. With a cache the block attends to every slot ``< length[b, k]`` of
    each layer and kv head plus itself under ``mask``, and is written (uncommitted) at slots
    ``length .. length + T``; the caller commits what it keeps (``jaxtok.cache.commit``) and
    must leave room (length + T <= capacity). ``fresh_cache`` (static): the cache comes from
    init_cache, so nothing in it is scored. Tokens with position < 0 are padding (written, never
    committed by ``jaxtok.decode``; excluded from statistics).

    ``logits_at_BxN`` unembeds only those positions (logits [B, N, V]): prefill needs one row
    per prompt, and the full [B, T, V] fp32 logits of a large vocabulary cost more than the
    layers. The hidden states returned are those of the unembedded positions.
    """
    cfg = self.cfg
    dt = jnp.dtype(cfg.dtype)
    b, t = tokens_BxT.shape
    if positions.shape[:2] != (b, t):
      raise ValueError(f"positions: expected leading shape {(b, t)}, got {positions.shape}")
    if cache is not None and (cache.batch != b or len(cache.layers) != cfg.n_layers):
      raise ValueError(f"cache: expected batch {b} and {cfg.n_layers} layers, got batch "
                       f"{cache.batch} and {len(cache.layers)} layers")
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
    mask = masks.CAUSAL if mask is None else mask
    x_BxTxD = x_BxTxD.astype(dt)

    outs = []
    for i, block in enumerate(self.blocks):
      # cache.layers[i]: this layer's own [B, K, S, Dh] arrays (no slice, no copy).
      x_BxTxD, a = block(x_BxTxD, angles, mask, None if cache is None else cache.layers[i],
                         order_BxT, fresh_cache=fresh_cache, return_stats=return_stats)
      outs.append(a)

    if logits_at_BxN is not None:
      x_BxTxD = jnp.take_along_axis(x_BxTxD, logits_at_BxN[..., None], axis=1)
    h_BxTxD = self.final_norm(x_BxTxD)
    b_, n_ = h_BxTxD.shape[:2]
    h_NxD = h_BxTxD.reshape(b_ * n_, -1)

    def unembed(w_DxV):
      return matmul(h_NxD, w_DxV, jnp.float32).reshape(b_, n_, -1)
    # Tied: contract with the [V, D] table directly (a transposed copy would be re-made per
    # call); matmul pads a batch-1 bf16 row to the 8 rows XLA:CPU runs as a bf16 kernel.
    logits = (tied_logits(h_NxD, self.embed[...].astype(dt)).reshape(b_, n_, -1)
              if cfg.tie_embeddings else unembed(self.unembed[...].astype(dt)))
    extra = tuple(unembed(w[...].astype(dt)) for w in self.extra_heads)
    if cache is not None:
      cache = cache.replace(layers=tuple(a.layer for a in outs))
    return Output(logits=logits, extra_logits=extra, hidden=h_BxTxD if return_hidden else None,
                  cache=cache, kv=tuple((a.k_BxTxKxDh, a.v_BxTxKxDh) for a in outs),
                  stats=tuple(a.stats for a in outs) if return_stats else None)


def tied_logits(h_NxD: Float[Array, "N D"], embed_VxD: Float[Array, "V D"]) -> Float[Array, "N V"]:
  """fp32 logits h . E^T against the [V, D] table (rows padded for bf16 like ``matmul``)."""
  return jnp.einsum("nd,vd->nv", pad_bf16_rows(h_NxD), embed_VxD,
                    preferred_element_type=jnp.float32)[:h_NxD.shape[0]]


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
  return Transformer(cfg, rngs=nnx.Rngs(params=seed))


def forward(graphdef: nnx.GraphDef, params: nnx.State, tokens_BxT, positions, mask=None,
            **kwargs) -> Output:
  """Pure function of (params, inputs): merges the module for the duration of one trace.
  Keyword arguments as ``Transformer.__call__``."""
  model = nnx.merge(graphdef, params)
  return model(tokens_BxT, positions, mask, **kwargs)


def default_positions(b: int, t: int) -> Int[Array, "B T"]:
  return jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
