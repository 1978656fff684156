"""orbax checkpoints of a whole run: train state (model + optimizer + step), the data
iterator's state and the config (DESIGN.md decision 8).

Restore targets carry the *current* mesh's shardings, so a run saved on 8 devices restores onto
1 (and back). A resume whose config differs in anything but run-length/cadence/mesh fields
raises and names the fields. Restore falls back to the newest intact checkpoint when a newer one
is unreadable (a save cut short by a crash or a full disk), moves the unreadable one aside to
``<dir>.corrupt/`` so the resumed run can save that step again, and says which it used. Every
failure is a one-line ``CheckpointError`` (orbax's own messages carry kilobytes of TensorStore
spec; only their first line is kept).

``load_params(run_dir)`` is the inference-only load: the newest intact checkpoint's parameters
(no optimizer state) as a ``jaxtok.decode.Model``, the model rebuilt from the run's config.json.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp

# Fields that may change between a run and its resumption.
RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.eval_every", "train.ckpt_every",
                    "train.ckpt_minutes", "train.progress", "mesh.")


class CheckpointError(ValueError):
  """A checkpoint or model file is missing, corrupt, or incompatible with what was asked for."""


def short_reason(e: BaseException, limit: int = 160) -> str:
  """One line for an exception: the OS error if one caused it (e.g. a full disk), else the
  first line of the message, cut to ``limit`` characters."""
  seen, cur = set(), e
  while cur is not None and id(cur) not in seen:
    seen.add(id(cur))
    if isinstance(cur, OSError) and cur.errno:
      where = f": {cur.filename}" if cur.filename else ""
      return f"{os.strerror(cur.errno)}{where}"
    cur = cur.__cause__ or cur.__context__
  text = (str(e).strip().splitlines() or [""])[0]
  if len(text) > limit:
    text = text[:limit] + "..."
  return f"{type(e).__name__}: {text}" if text else type(e).__name__


def _is_disk_full(e: BaseException) -> bool:
  return "No space left" in short_reason(e) or any(
      isinstance(c, OSError) and c.errno == errno.ENOSPC for c in (e, e.__cause__, e.__context__))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def config_mismatch(saved: dict, current: dict) -> list[str]:
  # Compare in JSON form: the saved copy has lists where the live config has tuples.
  a, b = _flatten(saved), _flatten(json.loads(json.dumps(current)))
  out = []
  for key in sorted(set(a) | set(b)):
    if any(key.startswith(f) for f in RESUMABLE_FIELDS):
      continue
    if a.get(key) != b.get(key):
      out.append(f"{key}: checkpoint has {a.get(key)!r}, config has {b.get(key)!r}")
  return out


class Checkpointer:
  def __init__(self, directory: str | Path, max_to_keep: int = 2):
    self.directory = Path(directory).absolute()
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                                             create=True))
    self.restored_step: int | None = None
    self._saving: int | None = None  # the step of the last save (async: it may still fail)
    self.skipped: list[tuple[int, str]] = []  # (step, why) of unreadable newer checkpoints

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def _io_error(self, step: int, e: BaseException) -> CheckpointError:
    intact = [s for s in self.manager.all_steps() if s != step]
    kept = (f"the checkpoint at step {max(intact)} is intact" if intact else
            "no earlier checkpoint exists")
    hint = "free disk space, then" if _is_disk_full(e) else "fix the cause, then"
    return CheckpointError(f"could not write checkpoint {self.directory}/{step}: "
                           f"{short_reason(e)}; {kept} ({hint} continue with --resume)")

  def save(self, step: int, state, data_state: dict, config: dict) -> None:
    latest = self.latest_step()
    if latest is not None and step <= latest:
      # orbax would skip it silently, and the run's last steps would be lost.
      raise CheckpointError(f"{self.directory} already holds step {latest}; refusing to save "
                            f"step {step} over a newer or equal one")
    pending, self._saving = self._saving, step
    try:  # an earlier async save's failure surfaces here (orbax waits for it anyway)
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._io_error(pending if pending is not None else step, e) from e
    try:
      self.manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state),
          data=ocp.args.JsonSave(data_state),
          config=ocp.args.JsonSave(config)))
    except Exception as e:  # noqa: BLE001 -- orbax raises many types for I/O failures
      raise self._io_error(step, e) from e

  def wait(self) -> None:
    try:
      self.manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001 -- an async save failed
      raise self._io_error(self._saving if self._saving is not None else -1, e) from e

  def _restore_one(self, step: int, target, config: dict):
    try:
      saved_config = self.manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))["config"]
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"checkpoint {self.directory}/{step} is unreadable: "
                            f"{short_reason(e)}") from e
    diffs = config_mismatch(saved_config, config)
    if diffs:
      raise ValueError("cannot resume: the config differs from the checkpoint's:\n  " +
                       "\n  ".join(diffs))
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001
      raise CheckpointError(f"checkpoint {self.directory}/{step} could not be restored "
                            f"(corrupt or written by an incompatible model): "
                            f"{short_reason(e)}") from e
    return restored["state"], restored["data"]

  def restore(self, abstract_state, config: dict, step: int | None = None):
    """Returns (state, data_state) restored into ``abstract_state``'s shapes and shardings.

    With ``step=None`` tries the checkpoints newest first; ``restored_step`` and ``skipped``
    say which one was used and why newer ones were not."""
    steps = sorted(self.manager.all_steps(), reverse=True) if step is None else [step]
    if not steps:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
    self.skipped, errors = [], []
    for s in steps:
      try:
        out = self._restore_one(s, target, config)
      except CheckpointError as e:
        errors.append(e)
        self.skipped.append((s, str(e)))
        continue
      except ValueError as e:  # config mismatch: the same in every checkpoint of the run
        raise CheckpointError(str(e)) from None
      self.restored_step = s
      if self.skipped and jax.process_index() == 0:
        self._move_aside([b for b, _ in self.skipped])
      return out
    if len(errors) == 1:
      raise errors[0]
    raise CheckpointError(f"no intact checkpoint in {self.directory}: " +
                          "; ".join(str(e) for e in errors))

  def _move_aside(self, steps: list[int]) -> None:
    # Keeps the unreadable files for inspection, and frees the step so the resumed run saves it.
    self.wait()
    aside = self.directory.with_name(self.directory.name + ".corrupt")
    aside.mkdir(exist_ok=True)
    for s in steps:
      src = self.directory / str(s)
      if src.exists():
        dst = aside / str(s)
        if dst.exists():
          shutil.rmtree(dst)
        src.rename(dst)
    self.manager.reload()

  def close(self) -> None:
    self.manager.close()


def load_params(run_dir: str | Path, model_factory: Callable[[int], Any] | None = None):
  """The trained parameters of a run as a ``jaxtok.decode.Model``, from the newest intact
  checkpoint in ``run_dir/checkpoints`` (parameters only: the optimizer state is not read).

  The model is rebuilt from ``run_dir/config.json``'s ``model`` section (a ``ModelConfig``: the
  Transformer); a run of another module passes its ``model_factory`` (``seed -> nnx.Module``,
  ``jaxtok.train.loop.ModelFactory``) instead. Raises ``CheckpointError`` naming the directory
  when it holds no config or no checkpoint.
  """
  from flax import nnx

  from jaxtok.config import ConfigError, from_dict
  from jaxtok.decode.model import Model, ModelDef
  from jaxtok.nn.config import ModelConfig
  from jaxtok.nn.transformer import init_model

  run_dir = Path(run_dir).absolute()
  if not run_dir.is_dir():
    raise CheckpointError(f"run_dir: {run_dir} is not a directory")
  if model_factory is None:
    cfg_path = run_dir / "config.json"
    if not cfg_path.is_file():
      raise CheckpointError(f"{run_dir}: no config.json (not a run directory); pass "
                            "model_factory= for a run that wrote none")
    section = json.loads(cfg_path.read_text()).get("model")
    if not isinstance(section, dict):
      raise CheckpointError(f"{cfg_path}: no `model` section (a ModelConfig); pass "
                            "model_factory= for a run of another model")
    try:
      model_cfg = from_dict(ModelConfig, section)
    except (ConfigError, TypeError) as e:
      raise CheckpointError(f"{cfg_path}: `model` is not a ModelConfig ({e})") from e
    model_factory = lambda seed: init_model(model_cfg, seed)
  ckpt_dir = run_dir / "checkpoints"
  if not ckpt_dir.is_dir():
    raise CheckpointError(f"{run_dir}: no checkpoints/ directory (was the run trained here?)")
  abstract = nnx.eval_shape(lambda: model_factory(0))
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  manager = ocp.CheckpointManager(ckpt_dir)
  try:
    steps = sorted(manager.all_steps(), reverse=True)
    if not steps:
      raise CheckpointError(f"no checkpoint found in {ckpt_dir}")
    errors = []
    for step in steps:
      try:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item={"params": abstract_params}, partial_restore=True)))
      except Exception as e:  # noqa: BLE001 -- orbax raises many types for a bad checkpoint
        errors.append(f"{ckpt_dir}/{step}: {short_reason(e)}")
        continue
      return Model(defn=ModelDef(graphdef, abstract.cfg), params=restored["state"]["params"])
  finally:
    manager.close()
  raise CheckpointError(f"no intact checkpoint in {ckpt_dir}: " + "; ".join(errors))
