"""The training loop: sharded init, one compiled step, metrics, evals, checkpoints, resume.

The host dispatches step t before reading step t-1's metrics, so logging never stalls the
device; a NaN/inf loss raises ``FloatingPointError`` naming the step. Every batch's token ids
are checked on the host before the step sees them (``check_batch_ids``). The run directory is
held for the run's lifetime (``jaxtok.rundir``); checkpoints are saved every
``train.ckpt_every`` steps (or ``train.ckpt_minutes`` of training), at the end, and on SIGTERM,
after which ``train`` raises ``Preempted``. After a resume the returned history and evals are
the whole run's (read back from ``metrics.jsonl``), so figures show every step.

The model is a seam (nanodo's ``model_factory``): ``setup``/``train`` take a ``ModelFactory``,
``seed -> nnx.Module``; ``transformer_factory(cfg)`` is jaxtok's Transformer for a ``ModelConfig``.
``train`` returns the trained parameters as a ``jaxtok.decode.Model``.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from jaxtok import rundir, runtime
from jaxtok.ckpt import Checkpointer
from jaxtok.config import require
from jaxtok.data.pipeline import check_batch_ids, check_token_range, lm_batches, to_lm_example
from jaxtok.decode.model import Model, ModelDef
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import init_model
from jaxtok.sharding import (MeshConfig, batch_sharding, describe_sharding, make_mesh,
                             param_shardings)
from jaxtok.train.config import TrainConfig
from jaxtok.train.losses import LossFn, next_token_loss
from jaxtok.train.step import TrainState, eval_step, lr_schedule, make_optimizer, train_step


ModelFactory = Callable[[int], nnx.Module]
"""The model seam of training (nanodo's ``model_factory``): ``model_factory(seed)`` builds a
fresh module from an init seed. The module must carry a ``cfg`` (its config; for a
``ModelConfig`` the trainer also checks token ids and lengths against it) because the trained
``Model`` handle keeps it, and every variable the trainer sees must be an ``nnx.Param`` with
``logical_axes`` metadata (``jaxtok.sharding`` maps it to the mesh; ``None`` axes replicate). It is
called under ``nnx.eval_shape`` (shapes only) and inside the sharded init jit, so it must be
traceable and deterministic in ``seed``."""


def transformer_factory(cfg: ModelConfig) -> ModelFactory:
  """jaxtok's Transformer for ``cfg`` (the standard LM): ``seed -> init_model(cfg, seed)``."""
  return functools.partial(init_model, cfg)


@dataclasses.dataclass
class Setup:
  """Everything a run needs that is derived from the configs (no arrays materialised)."""
  mesh: jax.sharding.Mesh
  model_def: ModelDef  # graphdef + the module's cfg; identity-hashed (jaxtok.decode)
  model_factory: ModelFactory
  tx: optax.GradientTransformation
  state_shardings: TrainState
  batch_sharding: NamedSharding
  loss_fn: LossFn = next_token_loss

  @property
  def graphdef(self) -> nnx.GraphDef:
    return self.model_def.graphdef

  def model(self, params) -> Model:
    """The ``jaxtok.decode.Model`` handle of ``params`` (same definition: no recompile)."""
    return Model(defn=self.model_def, params=params)


def split_params(model: nnx.Module) -> tuple[nnx.GraphDef, nnx.State]:
  """(graphdef, nnx.Param state); raises if the model holds any other variable, so nothing
  that is not a parameter can be differentiated or optimised by accident."""
  return nnx.split(model, nnx.Param)


def setup(model_factory: ModelFactory, train_cfg: TrainConfig, mesh_cfg: MeshConfig,
          devices=None, loss_fn: LossFn = next_token_loss) -> Setup:
  if not callable(model_factory) or isinstance(model_factory, ModelConfig):
    raise TypeError(f"model_factory: expected a callable seed -> nnx.Module (for a ModelConfig "
                    f"use transformer_factory(cfg)), got {type(model_factory).__name__}")
  mesh = make_mesh(mesh_cfg, devices)
  abstract = nnx.eval_shape(lambda: model_factory(train_cfg.seed))
  if not hasattr(abstract, "cfg"):
    raise TypeError(f"model_factory: the module {type(abstract).__name__} has no `cfg` "
                    "attribute (the trained Model keeps its config)")
  graphdef, abstract_params = split_params(abstract)
  p_shardings = param_shardings(abstract_params, mesh)
  tx = make_optimizer(train_cfg)
  abstract_opt = jax.eval_shape(tx.init, abstract_params)
  replicated = NamedSharding(mesh, P())
  opt_shardings = optax.tree_utils.tree_map_params(
      tx, lambda _, s: s, abstract_opt, p_shardings,
      transform_non_params=lambda _: replicated, is_leaf=lambda x: isinstance(x, nnx.Variable))
  state_shardings = TrainState(step=replicated, params=p_shardings, opt_state=opt_shardings,
                               key=replicated)
  return Setup(mesh, ModelDef(graphdef, abstract.cfg), model_factory, tx, state_shardings,
               batch_sharding(mesh), loss_fn)


def fresh_state(s: Setup, seed: int) -> TrainState:
  """The step-0 state (traceable: ``jax.eval_shape`` of it is the abstract state)."""
  params = split_params(s.model_factory(seed))[1]
  # The step key is derived apart from the init seed's parameter stream.
  key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=s.tx.init(params),
                    key=key)


def init_state(s: Setup, seed: int) -> TrainState:
  """Parameters and optimizer state created directly in their shards."""
  return jax.jit(lambda: fresh_state(s, seed), out_shardings=s.state_shardings)()


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
  # The loss's own metrics (LossAux.metrics), token-weighted over the batches like the loss.
  metrics = {k: sum(float(o["metrics"][k]) * float(o["tokens"]) for o in outs) / tokens
             for k in outs[0]["metrics"]}
  return {"loss": loss, "loss_per_position": per_pos.tolist(), "metrics": metrics}


def _eval_record(step: int, ev: dict) -> dict:
  return {"step": step, "val_loss": ev["loss"],
          **{f"val_{k}": v for k, v in ev["metrics"].items()}}


def _check_finite(metrics: dict, step: int) -> dict:
  host = {k: float(v) for k, v in metrics.items()}
  if not math.isfinite(host["loss"]):
    raise FloatingPointError(f"loss is {host['loss']} at step {step}; lower train.lr or "
                             f"check the data")
  return host


class Preempted(Exception):
  """Training stopped on SIGTERM after saving a checkpoint at ``step``."""

  def __init__(self, step: int, directory: Path):
    super().__init__(f"stopped by SIGTERM at step {step}; saved a checkpoint in {directory}; "
                     f"continue with --resume")
    self.step, self.directory = step, directory


def _read_records(path: Path) -> list[dict]:
  out = []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      out.append(json.loads(line))
    except ValueError:  # a line cut short by a kill mid-write
      continue
  return out


class MetricsLog:
  """Append-only metrics.jsonl written by process 0; truncated to the resume step."""

  def __init__(self, path: Path, resume_step: int):
    self.path = path
    self.enabled = runtime.is_main_process()
    self.kept = [r for r in _read_records(path) if r.get("step", 0) <= resume_step] if (
        resume_step) else []
    if self.enabled:
      path.write_text("".join(json.dumps(r) + "\n" for r in self.kept))

  def write(self, record: dict) -> None:
    if self.enabled:
      with self.path.open("a") as f:
        f.write(json.dumps(record) + "\n")


def _note(msg: str) -> None:
  """Status on stderr (process 0), beside the progress bar: stdout stays the command's result."""
  if runtime.is_main_process():
    print(msg, file=sys.stderr, flush=True)


def _agree(flag: bool) -> bool:
  """True on every process if it is true on any (checkpoint decisions are collective)."""
  if jax.process_count() == 1:
    return flag
  from jax.experimental import multihost_utils
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag))))


def _check_shapes(model_cfg: ModelConfig, batch: dict) -> None:
  if model_cfg.positions != "learned" or "inputs" not in batch:
    return
  t = np.asarray(batch["inputs"]).shape[-1]
  require(t <= model_cfg.max_len, "model.max_len", f">= the batches' sequence length {t} "
          "(data.seq_len) with model.positions='learned'", model_cfg.max_len)
  if "positions" in batch:
    check_token_range(batch["positions"], model_cfg.max_len, "batch positions (model.max_len)")


def train(model_factory: ModelFactory, train_cfg: TrainConfig, mesh_cfg: MeshConfig, *,
          train_source, val_batches, batch_size: int, out_dir: str | Path,
          config_dict: dict, resume: bool = False, loss_fn: LossFn = next_token_loss,
          example_fn=to_lm_example) -> dict:
  """Trains the module ``model_factory(train_cfg.seed)`` (``transformer_factory(cfg)`` for the
  standard Transformer); returns a dict: ``model`` (the trained ``jaxtok.decode.Model``),
  ``state``, ``setup``, ``history``, ``evals`` (``val_loss`` and ``val_<metric>`` of the loss's
  own metrics), ``final`` (the last evaluation) and ``tokens_per_s``.

  ``loss_fn`` is the step's loss (``jaxtok.train.losses``); ``example_fn`` turns one source
  example into one batch row (default: ``tokens`` -> next-token ``inputs/targets/weights``).
  ``out_dir`` must be this training's own directory: a fresh run into one that holds
  checkpoints raises (pass ``resume=True`` to continue it); ``resume=True`` with no checkpoint
  starts from step 0 and says so.
  """
  with rundir.hold(out_dir) as held:
    return _train(model_factory, train_cfg, mesh_cfg, train_source=train_source,
                  val_batches=val_batches, batch_size=batch_size, out_dir=held,
                  config_dict=config_dict, resume=resume, loss_fn=loss_fn,
                  example_fn=example_fn)


def _train(model_factory, train_cfg, mesh_cfg, *, train_source, val_batches, batch_size, out_dir,
           config_dict, resume, loss_fn, example_fn) -> dict:
  s = setup(model_factory, train_cfg, mesh_cfg, loss_fn=loss_fn)
  model_cfg = s.model_def.cfg
  shards = s.mesh.shape["data"] * s.mesh.shape["fsdp"]
  if batch_size % shards:
    raise ValueError(f"data.batch_size={batch_size} must divide by the data x fsdp mesh size "
                     f"{shards}")
  dataset = lm_batches(train_source, batch_size, seed=train_cfg.seed,
                       process_index=jax.process_index(), process_count=jax.process_count(),
                       example_fn=example_fn)
  # Host-side id checks: inside jit an id >= vocab turns logits NaN and a negative one wraps.
  # Token models only: another module (a ``cfg`` of its own) checks its inputs itself.
  token_model = isinstance(model_cfg, ModelConfig)
  check_targets = loss_fn is next_token_loss
  check_inputs = token_model and model_cfg.embedding == "learned"

  def check(batch: dict, what: str) -> None:
    if not token_model:
      return
    _check_shapes(model_cfg, batch)
    check_batch_ids(batch if check_inputs else {k: v for k, v in batch.items() if k != "inputs"},
                    model_cfg.vocab_size, what, targets=check_targets)

  check(dataset[0], "train batch 0")
  for i, b in enumerate(val_batches):
    check(b, f"validation batch {i}")
  # A few batches ahead: grain's default (16 threads, 500 batches) makes a short run of a costly
  # synthetic source generate hundreds of batches it never uses.
  data_iter = iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=2,
                                                             prefetch_buffer_size=8)))
  ckpt = Checkpointer(out_dir / "checkpoints")
  latest = ckpt.latest_step()
  if not resume and latest is not None:
    raise rundir.RunDirError(f"{ckpt.directory} already holds another run's checkpoints (up to "
                             f"step {latest}); continue it with --resume (resume=True) or use a "
                             f"fresh directory (--overwrite replaces it)")
  state = init_state(s, train_cfg.seed)
  if resume and latest is None:
    _note(f"resume: no checkpoint in {ckpt.directory}; training from step 0")
  elif resume:
    state, data_state = ckpt.restore(state, config_dict)
    data_iter.set_state(data_state)
    for bad, why in ckpt.skipped:
      _note(f"resume: skipped checkpoint {bad} ({why}); moved it to "
            f"{ckpt.directory.name}.corrupt/")
    _note(f"resume: restored step {ckpt.restored_step} of {train_cfg.steps} from "
          f"{ckpt.directory}/{ckpt.restored_step}")
  start = int(state.step)
  require(start <= train_cfg.steps, "train.steps", f">= the checkpoint's step {start}",
          train_cfg.steps)
  if resume and start == train_cfg.steps:
    _note(f"resume: the run already finished at step {start}; evaluating its final state "
          "(raise train.steps to train further)")
  if runtime.is_main_process():
    (out_dir / "sharding.txt").write_text(f"mesh {dict(s.mesh.shape)}\n"
                                          f"{describe_sharding(state.params)}\n")
  step_fn = compile_train_step(s)
  eval_fn = compile_eval_step(s)  # built once: a new jit wrapper per eval would recompile
  log = MetricsLog(out_dir / "metrics.jsonl", start)
  schedule = lr_schedule(train_cfg)
  first = dataset[0]  # tokens per row; a batch without ``inputs`` counts examples
  tokens_per_step = batch_size * (int(np.prod(first["inputs"].shape[1:])) if "inputs" in first
                                  else 1)
  bar = tqdm(total=train_cfg.steps, initial=start, desc=f"train {rundir.label(out_dir)}",
             disable=not (train_cfg.progress and runtime.is_main_process()), unit="step",
             dynamic_ncols=True)
  history, pending, t_last, evals = [], None, time.perf_counter(), []
  t_begin = t_ckpt = t_last
  multi = jax.process_count() > 1

  def flush(pending):
    step_no, metrics, dt = pending
    host = _check_finite(metrics, step_no)
    record = {"step": step_no, **host, "lr": float(schedule(step_no - 1)),
              "tokens_per_s": tokens_per_step / max(dt, 1e-9)}
    history.append(record)
    if step_no % train_cfg.log_every == 0 or step_no == train_cfg.steps:
      log.write(record)
      bar.set_postfix(loss=f"{host['loss']:.3f}", tok_s=f"{record['tokens_per_s']:.0f}")

  stop = []  # SIGTERM (the preemption signal of TPU VMs and schedulers): save, then stop
  previous = None
  if threading.current_thread() is threading.main_thread():
    previous = signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
  try:
    for step_no in range(start + 1, train_cfg.steps + 1):
      host_batch = next(data_iter)
      check(host_batch, f"train batch at step {step_no}")
      state, metrics = step_fn(state, to_global(host_batch, s.batch_sharding))
      if pending is not None:
        flush(pending)
      now = time.perf_counter()
      pending, t_last = (step_no, metrics, now - t_last), now
      bar.update(1)
      if step_no % train_cfg.eval_every == 0 and step_no != train_cfg.steps:
        ev = evaluate(s, eval_fn, state.params, val_batches)
        evals.append(_eval_record(step_no, ev))
        log.write(_eval_record(step_no, ev))
      if step_no == train_cfg.steps:
        break  # the final checkpoint follows the final evaluation
      # On a pod the decisions are collective, so they are taken at log steps only.
      sync = not multi or step_no % train_cfg.log_every == 0
      preempt = sync and _agree(bool(stop))
      if train_cfg.ckpt_every:
        due = step_no % train_cfg.ckpt_every == 0
      else:
        due = sync and _agree(time.perf_counter() - t_ckpt >= 60 * train_cfg.ckpt_minutes)
      if due or preempt:
        ckpt.save(step_no, state, data_iter.get_state(), config_dict)
        t_ckpt = time.perf_counter()
      if preempt:
        flush(pending)
        bar.close()
        ckpt.wait()
        ckpt.close()
        raise Preempted(step_no, ckpt.directory)
    if pending is not None:
      flush(pending)
    bar.close()
    final = evaluate(s, eval_fn, state.params, val_batches)
    finished_before = start == train_cfg.steps and any(
        r.get("step") == start and "val_loss" in r for r in log.kept)
    evals.append(_eval_record(train_cfg.steps, final))
    if not finished_before:
      log.write(_eval_record(train_cfg.steps, final))
    if ckpt.latest_step() != train_cfg.steps:
      ckpt.save(train_cfg.steps, state, data_iter.get_state(), config_dict)
    ckpt.wait()
  finally:
    if previous is not None:
      signal.signal(signal.SIGTERM, previous)
  ckpt.close()
  # The whole run's curve: what earlier sessions logged, then this session's every step.
  earlier = [r for r in log.kept if "loss" in r]
  session, history = history, earlier + history
  evals = [r for r in log.kept if "val_loss" in r and r["step"] < train_cfg.steps] + evals
  # Skip the first steps (compilation) when reporting throughput.
  src = session or earlier
  steady = [h["tokens_per_s"] for h in src[len(src) // 4:]] or [0.0]
  tokens_per_s = float(np.median(steady))
  if runtime.is_main_process():
    n_params = int(sum(np.prod(x.shape) for x in jax.tree.leaves(state.params)))
    (out_dir / "train.json").write_text(json.dumps({
        "params": n_params, "steps": train_cfg.steps, "batch_size": batch_size,
        "tokens_per_step": tokens_per_step, "tokens": train_cfg.steps * tokens_per_step,
        "tokens_per_s": tokens_per_s, "resumed_from": start if resume else None,
        "seconds_this_session": round(time.perf_counter() - t_begin, 1)}, indent=2))
  return {"model": s.model(state.params), "state": state, "setup": s, "history": history,
          "evals": evals, "final": final, "tokens_per_s": tokens_per_s}
