"""The loss seam of the one train step (nanodo's ``LossFnFactory``; DESIGN.md decision 2).

A paper's training differs from the standard LM only in the loss function it hands
``train_step``: ``loss_fn(graphdef, params, batch, key) -> (loss, LossAux)``. The batch is a dict
of arrays (a pytree, so which keys are present is static under jit); ``key`` is a fresh PRNG key
per step (random per-sequence embeddings, dropout-like draws). ``next_token_loss`` is the default:
it reads the optional ``positions`` (1-D or N-D), ``mask`` and ``embeddings`` a batch may carry.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jaxtyping import Array, Float, Int

from jaxtok.nn.transformer import default_positions, forward


@struct.dataclass
class LossAux:
  """What a loss reports besides its value: per-token NLL and weights (for per-position eval
  curves and token counts) and any scalar metrics of its own."""
  nll_BxT: Float[Array, "B T"]
  weights_BxT: Float[Array, "B T"]
  metrics: dict = struct.field(default_factory=dict)


LossFn = Callable[[nnx.GraphDef, nnx.State, dict, jax.Array], tuple[jax.Array, LossAux]]


def cross_entropy(logits_BxTxV: Float[Array, "B T V"],
                  targets_BxT: Int[Array, "B T"]) -> Float[Array, "B T"]:
  """Per-token negative log-likelihood (nats) of the targets; fp32 whatever the logits' dtype."""
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV.astype(jnp.float32),
                                                         targets_BxT)


def weighted_mean(nll_BxT: Float[Array, "B T"], weights_BxT: Float[Array, "B T"]) -> jax.Array:
  return jnp.sum(nll_BxT * weights_BxT) / jnp.maximum(jnp.sum(weights_BxT), 1.0)


def model_inputs(batch: dict) -> dict:
  """The forward's optional per-token inputs a batch carries (positions default to 0..T-1)."""
  b, t = batch["inputs"].shape
  return {"positions": batch["positions"] if "positions" in batch else default_positions(b, t),
          "mask": batch.get("mask"), "embeddings_BxTxD": batch.get("embeddings")}


def next_token_loss(graphdef, params, batch: dict, key: jax.Array) -> tuple[jax.Array, LossAux]:
  """Weighted next-token cross-entropy of the main head.

  batch: ``inputs`` i32[B,T], ``targets`` i32[B,T], ``weights`` f32[B,T]; optional
  ``positions`` i32[B,T] or [B,T,P], ``mask`` bool[B,T,T], ``embeddings`` f32[B,T,D].
  """
  del key  # deterministic
  x = model_inputs(batch)
  out = forward(graphdef, params, batch["inputs"], x["positions"], x["mask"],
                embeddings_BxTxD=x["embeddings_BxTxD"])
  nll_BxT = cross_entropy(out.logits, batch["targets"])
  w_BxT = batch["weights"].astype(jnp.float32)
  return weighted_mean(nll_BxT, w_BxT), LossAux(nll_BxT=nll_BxT, weights_BxT=w_BxT)
