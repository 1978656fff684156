"""The paper's disentangled attention-only model and its hand-built 2-layer inverters.

Alur, Hays, Raghavan, Shah (arXiv 2509.24125), Sec. 2 (model) and the constructions of Sec. 4:

    h^0 = [X, I_T]                                  one-hot positions concatenated to the rows
    attn(h; A) = softmax(MASK(h A h^T)) h           one bilinear form per head, values = h itself
    h^{l+1} = [h^l, attn(h^l; A^{l+1}_1), ...]      residual by concatenation (heads concatenated)
    Y_hat = h^L[read rows] W                        linear readout of n rows

so layer l's width is D_l = (n + T)(1 + H)^l. The model is an ``nnx.Module`` (A and W are
``nnx.Param``, replicated) with a ``cfg`` (``VectorConfig``), so it trains through the training
model seam (``jaxtok.train.loop.train(vector_factory(cfg), ..., loss_fn=vector_loss)``);
``vector_forward`` is a pure function of (graphdef, params).

Hand construction (two hops, checked exactly in tests): at the read row r_j of answer j,
layer 1 queries with its position one-hot against key *content* restricted to the P block and
finds the P row i* with sigma(i*) = j, copying its position one-hot e_{i*}; layer 2 queries with
the copied e_{i*} against key *position* n + i* and copies Y_P[i*] = Y_j; W reads that copy.
Without a causal mask (or with scratch rows after the input, which see everything) both hops
are visible and the error vanishes as e^{-beta}; under the plain causal mask the second hop is
hidden exactly for the unrecoverable rows (jaxtok.permutation).
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jaxtyping import Array, Bool, Float, Int

# Finite (jaxtok's one mask value): -inf inside where() gives NaN gradients once a row is fully
# masked; exp of it underflows to exactly 0, which is what makes Lemma 1 hold bit for bit.
from jaxtok_kernels.numerics import MASKED as _MASKED

from jaxtok.config import require
from jaxtok.permutation.task import read_rows, seq_len
from jaxtok.train.losses import LossAux


def widths(n: int, t: int, n_layers: int, n_heads: int) -> list[int]:
  """Residual widths D_0..D_L: D_0 = n + T, D_{l+1} = D_l (1 + H)."""
  out = [n + t]
  for _ in range(n_layers):
    out.append(out[-1] * (1 + n_heads))
  return out


@dataclasses.dataclass(frozen=True)
class VectorConfig:
  """The vector model's shape (its ``cfg``: what a checkpoint's model is rebuilt from)."""
  n: int
  t: int
  n_layers: int = 2
  n_heads: int = 1
  init_std: float = 0.0


def vector_factory(cfg: VectorConfig):
  """The training model seam (``jaxtok.train.loop.ModelFactory``) for ``cfg``."""
  return lambda seed: VectorModel(cfg.n, cfg.t, n_layers=cfg.n_layers, n_heads=cfg.n_heads,
                                  init_std=cfg.init_std, seed=seed)


class VectorModel(nnx.Module):
  """Disentangled attention-only transformer on inputs f32[B, T, n]. ``init_std=0`` is the
  paper's zero initialisation (the readout's gradient is non-zero, so training starts)."""

  def __init__(self, n: int, t: int, *, n_layers: int = 2, n_heads: int = 1,
               init_std: float = 0.0, seed: int = 0):
    require(n >= 2, "n", "an integer >= 2", n)
    require(t >= n, "t", f">= n = {n} (rows of the input)", t)
    require(n_layers >= 1 and n_heads >= 1, "n_layers/n_heads", "positive integers",
            (n_layers, n_heads))
    self.cfg = VectorConfig(n, t, n_layers, n_heads, init_std)
    self.n, self.t, self.n_layers, self.n_heads = n, t, n_layers, n_heads
    dims = widths(n, t, n_layers, n_heads)
    key = jax.random.key(seed)
    keys = jax.random.split(key, n_layers + 1)
    # Replicated (no logical axis is sharded): the model is tiny.
    self.A = nnx.List([nnx.Param(init_std * jax.random.normal(keys[i], (n_heads, d, d)),
                                 logical_axes=(None, None, None))
                       for i, d in enumerate(dims[:-1])])
    self.W = nnx.Param(init_std * jax.random.normal(keys[-1], (dims[-1], n)),
                       logical_axes=(None, None))

  def __call__(self, x_BxTxN: Float[Array, "B T N"],
               mask_BxTxS: Bool[Array, "B T T"]) -> Float[Array, "B T D"]:
    """The final residual stream h^L f32[B, T, D_L]."""
    b, t, n = x_BxTxN.shape
    if (t, n) != (self.t, self.n):
      raise ValueError(f"x_BxTxN: expected [B, {self.t}, {self.n}], got {x_BxTxN.shape}")
    if mask_BxTxS.shape != (b, t, t):
      raise ValueError(f"mask_BxTxS: expected {(b, t, t)}, got {mask_BxTxS.shape}")
    pos_BxTxT = jnp.broadcast_to(jnp.eye(t, dtype=x_BxTxN.dtype), (b, t, t))
    h_BxTxD = jnp.concatenate([x_BxTxN, pos_BxTxT], axis=-1)
    for a in self.A:
      s_BxHxTxS = jnp.einsum("btd,hde,bse->bhts", h_BxTxD, a[...], h_BxTxD)
      s_BxHxTxS = jnp.where(mask_BxTxS[:, None], s_BxHxTxS, _MASKED)
      p_BxHxTxS = jax.nn.softmax(s_BxHxTxS, axis=-1)
      o_BxTxHxD = jnp.einsum("bhts,bsd->bthd", p_BxHxTxS, h_BxTxD)
      h_BxTxD = jnp.concatenate([h_BxTxD, o_BxTxHxD.reshape(b, t, -1)], axis=-1)
    return h_BxTxD


def vector_forward(graphdef: nnx.GraphDef, params: nnx.State, x_BxTxN, mask_BxTxS):
  """Pure: h^L f32[B, T, D_L]."""
  return nnx.merge(graphdef, params)(x_BxTxN, mask_BxTxS)


def vector_predict(graphdef: nnx.GraphDef, params: nnx.State, x_BxTxN, mask_BxTxS,
                   read_BxN: Int[Array, "B N"]) -> Float[Array, "B N N"]:
  """Y_hat = h^L[read rows] W, f32[B, n, n]."""
  model = nnx.merge(graphdef, params)
  h_BxTxD = model(x_BxTxN, mask_BxTxS)
  h_BxNxD = jnp.take_along_axis(h_BxTxD, read_BxN[..., None], axis=1)
  return h_BxNxD @ model.W[...]


def vector_loss(graphdef, params, batch: dict, key: jax.Array) -> tuple[jax.Array, LossAux]:
  """The paper's loss: squared error summed over the n x n answer, averaged over examples.
  batch: ``x`` f32[B,T,n], ``y`` f32[B,n,n], ``mask`` bool[B,T,T], ``read`` i32[B,n]."""
  del key  # deterministic
  pred_BxNxN = vector_predict(graphdef, params, batch["x"], batch["mask"], batch["read"])
  se_BxN = jnp.sum(jnp.square(pred_BxNxN - batch["y"]), axis=-1)
  sse = jnp.mean(jnp.sum(se_BxN, axis=1))
  exact = jnp.mean(jnp.all(jnp.round(pred_BxNxN) == batch["y"], axis=(1, 2)))
  return sse, LossAux(nll_BxT=se_BxN, weights_BxT=jnp.ones_like(se_BxN),
                      metrics={"sse": sse, "exact_match": exact})


def hand_construction(n: int, n_scratch: int = 0, beta: float = 60.0) -> VectorModel:
  """The 2-layer, 1-head inverter for the layout [P; Y_P; 0_m] read at the last n rows.

  The same parameters serve every mask: unmasked (m = 0) and causal + scratch (m >= n) invert
  exactly up to e^{-beta} leakage; plain causal recovers only the recoverable rows.
  """
  require(beta > 0, "beta", "> 0", beta)
  t = seq_len(n, n_scratch)
  model = VectorModel(n, t, n_layers=2, n_heads=1)
  d0 = n + t
  a1 = np.zeros((d0, d0), np.float32)
  for j, r in enumerate(read_rows(n, n_scratch)):
    a1[n + r, j] = beta          # query position r_j x key content column j: P row sigma^-1(j)
    a1[n + r, n + n:] = -2 * beta  # keys outside the P block (Y_P rows hold 0/1 content too)
  a2 = np.zeros((2 * d0, 2 * d0), np.float32)
  for i in range(n):
    a2[d0 + n + i, n + n + i] = beta  # copied position e_i x key position n + i (Y_P row i)
  w = np.zeros((4 * d0, n), np.float32)
  w[2 * d0 + np.arange(n), np.arange(n)] = 1.0  # content of the layer-2 copy
  model.A[0][...] = jnp.asarray(a1)[None]
  model.A[1][...] = jnp.asarray(a2)[None]
  model.W[...] = jnp.asarray(w)
  return model
