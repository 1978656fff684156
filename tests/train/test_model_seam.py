"""The model seam of training (``ModelFactory``) and the inference-only ``ckpt.load_params``."""
import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.ckpt import CheckpointError, load_params
from jaxtok.config import to_dict
from jaxtok.data.sources import SeededSource, TokenWindows
from jaxtok.decode import Model
from jaxtok.nn import ModelConfig, forward
from jaxtok.sharding import MeshConfig
from jaxtok.train.config import TrainConfig
from jaxtok.train.loop import setup, train, transformer_factory
from jaxtok.train.losses import LossAux


@dataclasses.dataclass(frozen=True)
class RegCfg:
  d_in: int = 4


class Regressor(nnx.Module):
  """Not a Transformer: a linear map with its own config."""

  def __init__(self, cfg: RegCfg, seed: int):
    self.cfg = cfg
    self.w = nnx.Param(0.1 * jax.random.normal(jax.random.key(seed), (cfg.d_in, 1)),
                      logical_axes=(None, None))

  def __call__(self, x_BxD):
    return (x_BxD @ self.w[...])[:, 0]


def regression_loss(graphdef, params, batch, key):
  del key
  err_B = nnx.merge(graphdef, params)(batch["x"]) - batch["y"][:, 0]
  se_Bx1 = jnp.square(err_B)[:, None]
  return jnp.mean(se_Bx1), LossAux(nll_BxT=se_Bx1, weights_BxT=jnp.ones_like(se_Bx1),
                                   metrics={"max_abs_err": jnp.max(jnp.abs(err_B))})


class LinearSource(SeededSource):
  def __init__(self, seed: int):
    super().__init__(seed, 10_000)

  def generate(self, rng):
    x = rng.normal(size=4).astype(np.float32)
    return {"x": x, "y": np.asarray([x @ np.arange(1.0, 5.0)], np.float32)}  # batches: rank >= 2


VAL = [{"x": np.eye(4, dtype=np.float32), "y": np.arange(1.0, 5.0, dtype=np.float32)[:, None]}]


def _fit(out_dir, steps, resume=False):
  # min_lr_ratio=1: a constant rate after warm-up, so a 4-step run is the first 4 steps of a
  # 6-step one (cosine decay would depend on train.steps).
  cfg = TrainConfig(steps=steps, lr=0.05, warmup_steps=1, min_lr_ratio=1.0, progress=False,
                    eval_every=2, log_every=1, ckpt_every=2)
  return train(lambda seed: Regressor(RegCfg(), seed), cfg, MeshConfig(data=1),
               train_source=LinearSource(0), val_batches=VAL, batch_size=8, out_dir=out_dir,
               config_dict={"run": "regressor"}, resume=resume, loss_fn=regression_loss,
               example_fn=lambda e: e)


def test_a_non_transformer_trains_checkpoints_and_resumes_to_the_same_curve(tmp_path):
  whole = _fit(tmp_path / "whole", 6)
  losses = [h["loss"] for h in whole["history"]]
  assert losses[-1] < 0.5 * losses[0]
  assert [e["step"] for e in whole["evals"]] == [2, 4, 6]
  assert set(whole["evals"][-1]) == {"step", "val_loss", "val_max_abs_err"}
  assert isinstance(whole["model"], Model) and whole["model"].cfg == RegCfg()
  _fit(tmp_path / "split", 4)
  resumed = _fit(tmp_path / "split", 6, resume=True)
  assert [h["step"] for h in resumed["history"]] == list(range(1, 7))
  np.testing.assert_allclose([h["loss"] for h in resumed["history"]], losses, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(resumed["model"].params["w"][...]),
                             np.asarray(whole["model"].params["w"][...]), rtol=1e-6)
  loaded = load_params(tmp_path / "whole", lambda seed: Regressor(RegCfg(), seed))
  np.testing.assert_array_equal(np.asarray(loaded.params["w"][...]),
                                np.asarray(whole["model"].params["w"][...]))


def test_setup_rejects_a_config_or_a_module_without_cfg():
  cfg, model = TrainConfig(steps=2, warmup_steps=1), ModelConfig(vocab_size=16, d_model=16,
                                                                 n_layers=1, n_heads=2, d_ff=32)
  with pytest.raises(TypeError, match="model_factory: .*transformer_factory"):
    setup(model, cfg, MeshConfig(data=1))

  class NoCfg(nnx.Module):
    def __init__(self, seed):
      self.w = nnx.Param(jnp.zeros(2))

  with pytest.raises(TypeError, match="model_factory: the module NoCfg has no `cfg`"):
    setup(NoCfg, cfg, MeshConfig(data=1))


def test_load_params_round_trip_of_a_transformer_run(tmp_path):
  model_cfg = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=8)
  val = [{"inputs": np.zeros((2, 8), np.int32), "targets": np.zeros((2, 8), np.int32),
          "weights": np.ones((2, 8), np.float32)}]
  out = train(transformer_factory(model_cfg), TrainConfig(steps=3, warmup_steps=1,
                                                          progress=False),
              MeshConfig(data=1), train_source=TokenWindows(np.arange(200) % 16, 8),
              val_batches=val, batch_size=2, out_dir=tmp_path,
              config_dict={"model": to_dict(model_cfg)})
  (tmp_path / "config.json").write_text(json.dumps({"model": to_dict(model_cfg)}))
  loaded = load_params(tmp_path)
  assert loaded.cfg == model_cfg
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(out["model"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  tokens = jnp.arange(8, dtype=jnp.int32)[None] % 16
  pos = jnp.arange(8)[None]
  np.testing.assert_array_equal(
      np.asarray(forward(loaded.graphdef, loaded.params, tokens, pos).logits),
      np.asarray(forward(out["model"].graphdef, out["model"].params, tokens, pos).logits))


def test_load_params_errors_name_the_directory(tmp_path):
  with pytest.raises(CheckpointError, match=f"{tmp_path}: no config.json"):
    load_params(tmp_path)
  (tmp_path / "config.json").write_text(json.dumps({"train": {}}))
  with pytest.raises(CheckpointError, match="no `model` section"):
    load_params(tmp_path)
  model_cfg = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=8)
  (tmp_path / "config.json").write_text(json.dumps({"model": to_dict(model_cfg)}))
  with pytest.raises(CheckpointError, match=f"{tmp_path}: no checkpoints/"):
    load_params(tmp_path)
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(CheckpointError, match=f"no checkpoint found in {tmp_path}/checkpoints"):
    load_params(tmp_path)
  with pytest.raises(CheckpointError, match="run_dir: .* is not a directory"):
    load_params(tmp_path / "missing")
