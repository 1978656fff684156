"""Sharded (data=2, fsdp=2, tensor=2 on 8 fake CPU devices) equals single-device training."""
import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from jaxtok.nn import ModelConfig, init_model
from jaxtok.sharding import (MeshConfig, describe_sharding, logical_to_spec, make_mesh,
                             param_shardings)
from jaxtok.train.config import TrainConfig
from jaxtok.train.loop import compile_train_step, init_state, setup, to_global, transformer_factory

MODEL = ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                    max_len=16)
TRAIN = TrainConfig(steps=10, lr=1e-2, warmup_steps=1)


def _batch(seed):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, 64, (8, 17)).astype(np.int32)
  return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:],
          "weights": np.ones((8, 16), np.float32)}


def _train(mesh_cfg, devices):
  s = setup(transformer_factory(MODEL), TRAIN, mesh_cfg, devices=devices)
  state = init_state(s, seed=0)
  step = compile_train_step(s)
  losses = []
  for i in range(3):
    state, m = step(state, to_global(_batch(i), s.batch_sharding))
    losses.append(float(m["loss"]))
  return state, losses


def test_sharded_step_equals_single_device():
  assert len(jax.devices()) == 8
  ref_state, ref_losses = _train(MeshConfig(data=1), jax.devices()[:1])
  state, losses = _train(MeshConfig(data=2, fsdp=2, tensor=2), jax.devices())
  wq = state.params["blocks"][0]["attn"]["wq"][...]
  assert wq.sharding.spec == P("fsdp", "tensor", None)
  assert len(wq.addressable_shards) == 8
  np.testing.assert_allclose(losses, ref_losses, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5), state.params,
               ref_state.params)


def test_rule_conflict_raises():
  with pytest.raises(ValueError, match="conflict"):
    logical_to_spec(("embed", "embed"))
  with pytest.raises(ValueError, match="no sharding rule"):
    logical_to_spec(("nonsense",))


def test_indivisible_dimension_raises():
  mesh = make_mesh(MeshConfig(data=1, fsdp=1, tensor=8))
  _, abstract = nnx.split(nnx.eval_shape(lambda: init_model(MODEL)), nnx.Param)
  with pytest.raises(ValueError, match="does not divide"):
    param_shardings(abstract, mesh)


def test_mesh_shape_errors_and_describe():
  with pytest.raises(ValueError, match="need 12 devices"):
    MeshConfig(data=3, fsdp=2, tensor=2).shape(8)
  assert MeshConfig(data=-1, tensor=2).shape(8) == (4, 1, 2)
  s = setup(transformer_factory(MODEL), TRAIN, MeshConfig(data=2, fsdp=2, tensor=2))
  text = describe_sharding(init_state(s, 0).params)
  assert "['blocks'][0]['mlp']['w_gate']" in text and "P('fsdp', 'tensor')" in text
