"""orbax checkpoints of a whole run: train state (model + optimizer + step), the data
iterator's state and the config (DESIGN.md decision 8).

Restore targets carry the *current* mesh's shardings, so a run saved on 8 devices restores onto
1 (and back). A resume whose config differs in anything but run-length/cadence/mesh fields
raises and names the fields; a missing or unreadable checkpoint raises ``CheckpointError``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp

# Fields that may change between a run and its resumption.
RESUMABLE_FIELDS = ("train.steps", "train.log_every", "train.eval_every", "train.ckpt_every",
                    "train.progress", "mesh.")


class CheckpointError(ValueError):
  """A checkpoint or model file is missing, corrupt, or incompatible with what was asked for."""


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

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_state: dict, config: dict) -> None:
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        config=ocp.args.JsonSave(config)))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def restore(self, abstract_state, config: dict, step: int | None = None):
    """Returns (state, data_state) restored into ``abstract_state``'s shapes and shardings."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise CheckpointError(f"no checkpoint found in {self.directory}")
    try:
      saved_config = self.manager.restore(step, args=ocp.args.Composite(
          config=ocp.args.JsonRestore()))["config"]
    except Exception as e:  # orbax raises many types for unreadable files
      raise CheckpointError(f"checkpoint {self.directory}/{step} is unreadable: {e}") from e
    diffs = config_mismatch(saved_config, config)
    if diffs:
      raise CheckpointError("cannot resume: the config differs from the checkpoint's:\n  " +
                            "\n  ".join(diffs))
    target = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), abstract_state)
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore()))
    except Exception as e:
      raise CheckpointError(f"checkpoint {self.directory}/{step} could not be restored "
                            f"(corrupt or written by an incompatible model): {e}") from e
    return restored["state"], restored["data"]

  def close(self) -> None:
    self.manager.close()

