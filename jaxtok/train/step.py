"""The one pure training step and the eval step (DESIGN.md decision 2).

``train_step(graphdef, tx, loss_fn, state, batch) -> (state, metrics)`` is jitted once (see
``jaxtok.train.loop.compile_train_step``) with the state donated and shardings declared. Papers
differ only in ``loss_fn`` (``jaxtok.train.losses``); there is no second step behind a flag.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct

from jaxtok.train.config import TrainConfig
from jaxtok.train.losses import LossFn


@struct.dataclass
class TrainState:
  step: jax.Array
  params: nnx.State  # nnx.Param variables only: nothing else is ever optimised
  opt_state: optax.OptState
  key: jax.Array  # raw uint32[2] PRNG key (checkpointable); split once per step


def lr_schedule(cfg: TrainConfig) -> optax.Schedule:
  if cfg.warmup_steps == cfg.steps:  # all warm-up: optax's cosine needs a non-empty decay
    return optax.linear_schedule(0.0, cfg.lr, cfg.warmup_steps)
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


def train_step(graphdef, tx: optax.GradientTransformation, loss_fn: LossFn, state: TrainState,
               batch: dict):
  key, step_key = jax.random.split(state.key)

  def loss(params):
    return loss_fn(graphdef, params, batch, step_key)

  (loss_value, aux), grads = jax.value_and_grad(loss, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss_value, "grad_norm": optax.tree.norm(grads), **aux.metrics}
  return TrainState(step=state.step + 1, params=params, opt_state=opt_state, key=key), metrics


def eval_step(graphdef, loss_fn: LossFn, params, batch: dict, key: jax.Array):
  """The weighted mean loss, the per-position mean loss [T] (loss vs context), the token count
  and the loss's own metrics."""
  _, aux = loss_fn(graphdef, params, batch, key)
  w_BxT = aux.weights_BxT
  nll_BxT = aux.nll_BxT * w_BxT
  per_pos_T = nll_BxT.sum(0) / jnp.maximum(w_BxT.sum(0), 1.0)
  return {"loss": nll_BxT.sum() / jnp.maximum(w_BxT.sum(), 1.0), "loss_per_position": per_pos_T,
          "tokens": w_BxT.sum(), "metrics": aux.metrics}
