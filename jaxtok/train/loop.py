"""The training loop: sharded init, one compiled step, metrics, evals, checkpoints, resume.

The host dispatches step t before reading step t-1's metrics, so logging never stalls the
device; a NaN/inf loss raises ``FloatingPointError`` naming the step.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxtok import runtime
from jaxtok.ckpt import Checkpointer
from jaxtok.data.pipeline import lm_batches, to_lm_example
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import init_model
from jaxtok.sharding import (MeshConfig, batch_sharding, describe_sharding, make_mesh,
                             param_shardings)
from jaxtok.train.config import TrainConfig
from jaxtok.train.losses import LossFn, next_token_loss
from jaxtok.train.step import TrainState, eval_step, lr_schedule, make_optimizer, train_step


@dataclasses.dataclass
class Setup:
  """Everything a run needs that is derived from the configs (no arrays materialised)."""
  mesh: jax.sharding.Mesh
  graphdef: nnx.GraphDef
  tx: optax.GradientTransformation
  state_shardings: TrainState
  batch_sharding: NamedSharding
  loss_fn: LossFn = next_token_loss


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, nnx.Param state); raises if the model holds any other variable, so nothing
  that is not a parameter can be differentiated or optimised by accident."""
  return nnx.split(model, nnx.Param)


def setup(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh_cfg: MeshConfig,
          devices=None, loss_fn: LossFn = next_token_loss) -> Setup:
  mesh = make_mesh(mesh_cfg, devices)
  graphdef, abstract_params = split_params(nnx.eval_shape(lambda: init_model(model_cfg)))
  p_shardings = param_shardings(abstract_params, mesh)
  tx = make_optimizer(train_cfg)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = NamedSharding(mesh, P())
  opt_shardings = optax.tree_utils.tree_map_params(
      tx, lambda _, s: s, abstract_opt, p_shardings,
      transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, nnx.Variable))
  state_shardings = TrainState(step=replicated, params=p_shardings, opt_state=opt_shardings,
                               key=replicated)
  return Setup(mesh, graphdef, tx, state_shardings, batch_sharding(mesh), loss_fn)


def fresh_state(s: Setup, model_cfg: ModelConfig, seed: int) -> TrainState:
  """The step-0 state (traceable: ``jax.eval_shape`` of it is the abstract state)."""
  params = split_params(init_model(model_cfg, seed))[1]
  # The step key is derived apart from the init seed's parameter stream.
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=s.tx.init(params),
                    key=key)


def init_state(s: Setup, model_cfg: ModelConfig, seed: int) -> TrainState:
  """Parameters and optimizer state created directly in their shards."""
  return jax.jit(lambda: fresh_state(s, model_cfg, seed), out_shardings=s.state_shardings)()


def compile_train_step(s: Setup):
  return jax.jit(functools.partial(train_step, s.graphdef, s.tx, s.loss_fn),
                 in_shardings=(s.state_shardings, s.batch_sharding),
                 out_shardings=(s.state_shardings, None), donate_argnums=0)


def to_global(batch: dict[str, np.ndarray], sharding: NamedSharding) -> dict[str, jax.Array]:
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def compile_eval_step(s: Setup):
  return jax.jit(functools.partial(eval_step, s.graphdef, s.loss_fn))


def evaluate(s: Setup, eval_fn, params, val_batches) -> dict:
  # Fixed keys: a loss that draws randomness is scored on the same draws at every evaluation.
  outs = [eval_fn(params, to_global(b, s.batch_sharding), jax.random.PRNGKey(i))
          for i, b in enumerate(val_batches)]
  tokens = sum(float(o["tokens"]) for o in outs)
  loss = sum(float(o["loss"]) * float(o["tokens"]) for o in outs) / tokens
  per_pos = np.mean([np.asarray(o["loss_per_position"]) for o in outs], axis=0)
  return {"loss": loss, "loss_per_position": per_pos.tolist()}


def _check_finite(metrics: dict, step: int) -> dict:
  host = {k: float(v) for k, v in metrics.items()}
  if not math.isfinite(host["loss"]):
    raise FloatingPointError(f"loss is {host['loss']} at step {step}; lower train.lr or "
                             f"check the data")
  return host


class MetricsLog:
  """Append-only metrics.jsonl written by process 0; truncated to the resume step."""

  def __init__(self, path: Path, resume_step: int):
    self.path = path
    self.enabled = runtime.is_main_process()
    if self.enabled:
      kept = []
      if resume_step and path.exists():
        kept = [l for l in path.read_text().splitlines() if l and json.loads(l)["step"] <= resume_step]
      path.write_text("".join(l + "\n" for l in kept))

  def write(self, record: dict) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def train(model_cfg: ModelConfig, train_cfg: TrainConfig, mesh_cfg: MeshConfig, *,
          train_source, val_batches, batch_size: int, out_dir: str | Path,
          config_dict: dict, resume: bool = False, loss_fn: LossFn = next_token_loss,
          example_fn=to_lm_example) -> dict:
  """Trains; returns final eval metrics, the loss history and throughput.

  ``loss_fn`` is the step's loss (``jaxtok.train.losses``); ``example_fn`` turns one source
  example into one batch row (default: ``tokens`` -> next-token ``inputs/targets/weights``).
  """
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  s = setup(model_cfg, train_cfg, mesh_cfg, loss_fn=loss_fn)
  shards = s.mesh.shape["data"] * s.mesh.shape["fsdp"]
  if batch_size % shards:
    raise ValueError(f"data.batch_size={batch_size} must divide by the data x fsdp mesh size "
                     f"{shards}")
  dataset = lm_batches(train_source, batch_size, seed=train_cfg.seed,
                       process_index=jax.process_index(), process_count=jax.process_count(),
                       example_fn=example_fn)
  data_iter = iter(dataset.to_iter_dataset())
  ckpt = Checkpointer(out_dir / "checkpoints")
  state = init_state(s, model_cfg, train_cfg.seed)
  if resume:
    state, data_state = ckpt.restore(state, config_dict)
    data_iter.set_state(data_state)
  start = int(state.step)
  if runtime.is_main_process():
    (out_dir / "sharding.txt").write_text(f"mesh {dict(s.mesh.shape)}\n"
                                          f"{describe_sharding(state.params)}\n")
  step_fn = compile_train_step(s)
  eval_fn = compile_eval_step(s)  # built once: a new jit wrapper per eval would recompile
  log = MetricsLog(out_dir / "metrics.jsonl", start)
  schedule = lr_schedule(train_cfg)
  tokens_per_step = batch_size * int(np.prod(dataset[0]["inputs"].shape[1:]))
  bar = tqdm(total=train_cfg.steps, initial=start, disable=not (
      train_cfg.progress and runtime.is_main_process()), unit="step", dynamic_ncols=True)
  history, pending, t_last, evals = [], None, time.perf_counter(), []

  def flush(pending):
    step_no, metrics, dt = pending
    host = _check_finite(metrics, step_no)
    record = {"step": step_no, **host, "lr": float(schedule(step_no - 1)),
              "tokens_per_s": tokens_per_step / max(dt, 1e-9)}
    history.append(record)
    if step_no % train_cfg.log_every == 0 or step_no == train_cfg.steps:
      log.write(record)
      bar.set_postfix(loss=f"{host['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")

  for step_no in range(start + 1, train_cfg.steps + 1):
    batch = to_global(next(data_iter), s.batch_sharding)
    state, metrics = step_fn(state, batch)
    if pending is not None:
      flush(pending)
    now = time.perf_counter()
    pending, t_last = (step_no, metrics, now - t_last), now
    bar.update(1)
    if step_no % train_cfg.eval_every == 0 and step_no != train_cfg.steps:
      ev = evaluate(s, eval_fn, state.params, val_batches)
      evals.append({"step": step_no, "val_loss": ev["loss"]})
      log.write({"step": step_no, "val_loss": ev["loss"]})
    if train_cfg.ckpt_every and step_no % train_cfg.ckpt_every == 0:
      ckpt.save(step_no, state, data_iter.get_state(), config_dict)
  if pending is not None:
    flush(pending)
  bar.close()
  final = evaluate(s, eval_fn, state.params, val_batches)
  evals.append({"step": train_cfg.steps, "val_loss": final["loss"]})
  log.write({"step": train_cfg.steps, "val_loss": final["loss"]})
  if ckpt.latest_step() != train_cfg.steps:
    ckpt.save(train_cfg.steps, state, data_iter.get_state(), config_dict)
  ckpt.wait()
  ckpt.close()
  # Skip the first steps (compilation) when reporting throughput.
  steady = [h["tokens_per_s"] for h in history[len(history) // 4:]] or [0.0]
  return {"state": state, "setup": s, "history": history, "evals": evals, "final": final,
          "tokens_per_s": float(np.median(steady))}
