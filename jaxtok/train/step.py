"""The one pure training step and the eval step (DESIGN.md decision 2).

``train_step(state, batch) -> (state, metrics)`` is jitted once by ``compile_steps`` with the
state donated and shardings declared; there is no second implementation behind a flag.
A batch is ``{"inputs": i32[B,T], "targets": i32[B,T], "weights": f32[B,T]}``.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jaxtyping import Array, Float

from jaxtok.nn.transformer import default_positions, forward
from jaxtok.train.config import TrainConfig


@struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State
  opt_state: optax.OptState


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=cfg.lr, warmup_steps=cfg.warmup_steps,
      decay_steps=cfg.steps, end_value=cfg.lr * cfg.min_lr_ratio)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
  schedule = lr_schedule(cfg)
  # Decay matrices only: norm scales and biases are not regularised.
  decay_mask = lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)
  return optax.chain(optax.clip_by_global_norm(cfg.clip_norm),
                     optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                                 weight_decay=cfg.weight_decay, mask=decay_mask))


def token_losses(graphdef, params, batch) -> Float[Array, "B T"]:
  inputs_BxT = batch["inputs"]
  b, t = inputs_BxT.shape
  logits_BxTxV, _ = forward(graphdef, params, inputs_BxT, default_positions(b, t))
  if isinstance(logits_BxTxV, tuple):
    logits_BxTxV = logits_BxTxV[0]
  return optax.softmax_cross_entropy_with_integer_labels(logits_BxTxV, batch["targets"])


def _mean_loss(graphdef, params, batch):
  w_BxT = batch["weights"]
  return jnp.sum(token_losses(graphdef, params, batch) * w_BxT) / jnp.maximum(w_BxT.sum(), 1.0)


def train_step(graphdef, tx: optax.GradientTransformation, state: TrainState, batch):
  loss, grads = jax.value_and_grad(functools.partial(_mean_loss, graphdef))(state.params, batch)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads)}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state), metrics


def eval_step(graphdef, params, batch):
  """Returns the weighted mean loss and the per-position mean loss [T] (loss vs context)."""
  w_BxT = batch["weights"]
  nll_BxT = token_losses(graphdef, params, batch) * w_BxT
  per_pos_T = nll_BxT.sum(0) / jnp.maximum(w_BxT.sum(0), 1.0)
  return {"loss": nll_BxT.sum() / jnp.maximum(w_BxT.sum(), 1.0), "loss_per_position": per_pos_T,
          "tokens": w_BxT.sum()}
