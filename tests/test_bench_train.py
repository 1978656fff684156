"""`jaxtok bench train` plumbing at a tiny size: it runs, its FLOP count is ModelConfig's, and the
PyTorch replica is the same model (same loss on the same weights and batch), which is what makes
the benchmark's jax/torch ratio honest. No timing is asserted (DESIGN.md decision 11)."""
import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxtok.config import to_dict
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import init_model
from jaxtok.train.config import TrainConfig
from jaxtok.train.losses import next_token_loss
from jaxtok_experiments import bench_train, lm

# GQA (2 kv heads for 4 query heads) so the replica's head grouping is exercised.
TINY = ModelConfig(vocab_size=256, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=64,
                   max_len=16)
B, T = 8, 16  # batch divides the 8 fake devices


def _tiny_cfg():
  base = lm.smoke()
  return lm.Config(model=TINY, data=lm.DataConfig(seq_len=T, batch_size=B),
                   train=TrainConfig(steps=10, warmup_steps=2), mesh=base.mesh)


def test_bench_runs_and_reports_consistent_numbers(tmp_path):
  res = bench_train.run(_tiny_cfg(), steps=1, repeats=2, warmup=1, peak_sizes=(64, 128),
                        torch_args=None, log=lambda s: None)
  assert res["tokens_per_step"] == B * T
  assert res["flops_per_step"] == pytest.approx(TINY.flops_per_token(T) * B * T)
  j = res["jax"]
  assert j["tokens_per_s"] == pytest.approx(B * T / j["step_s"])
  assert j["flops_per_s"] == pytest.approx(res["flops_per_step"] / j["step_s"])
  assert res["mfu"] == pytest.approx(j["flops_per_s"] / res["peak_flops_per_s"])
  assert res["peak_flops_per_s"] == max(res["peak_flops_per_s_by_size"].values()) > 0
  assert len(res["rounds"]) == 2 and res["torch"] is None
  assert math.isfinite(j["init_loss"])
  table = bench_train.format_table(res)
  assert "MFU" in table and "jaxtok" in table
  json.dumps(res)  # the --out file is plain JSON


def test_main_writes_json(tmp_path):
  out = tmp_path / "bench.json"
  bench_train.main(["--preset", "smoke", "--steps", "1", "--repeats", "1", "--warmup", "0",
                    "--peak-sizes", "64", "--no-torch", "--out", str(out)])
  res = json.loads(out.read_text())
  assert res["preset"] == "smoke" and res["torch_note"].startswith("skipped")


def _dot_flops(jaxpr) -> int:
  """FLOPs (2 per multiply-add) of every dot_general in a jaxpr, sub-jaxprs included."""
  total = 0
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      (lhs_contract, _), _ = eqn.params["dimension_numbers"]
      lhs_shape = eqn.invars[0].aval.shape
      total += 2 * math.prod(eqn.outvars[0].aval.shape) * math.prod(
          lhs_shape[d] for d in lhs_contract)
    for v in eqn.params.values():
      for sub in (v if isinstance(v, (tuple, list)) else (v,)):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += _dot_flops(inner)
  return total


def test_flop_accounting_matches_the_traced_train_step():
  """ModelConfig.flops_per_token = every matmul of the fwd+bwd (3x fwd) except that attention
  scores and P@V are counted for the causal half of the [T, S] square the masked dense kernel
  computes; the other half is exactly 3 * L * 2 * H * Dh * T per token."""
  model = init_model(TINY)
  graphdef, params = nnx.split(model, nnx.Param)
  batch = {k: jnp.asarray(v) for k, v in bench_train.make_batch(B, T, 256).items()}
  loss = lambda p: jnp.mean(next_token_loss(graphdef, p, batch, None)[1].nll_BxT)
  fwd = _dot_flops(jax.make_jaxpr(loss)(params).jaxpr)
  fwd_bwd = _dot_flops(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)
  assert fwd_bwd == 3 * fwd
  masked_half = 3 * TINY.n_layers * 2 * TINY.n_heads * TINY.dh * T
  assert fwd_bwd == B * T * (TINY.flops_per_token(T) + masked_half)
  # The matmul part is 6 x (parameters that multiply activations): all but the norm scales
  # (the tied table is used once as a matmul, for the logits).
  norms = (2 * TINY.n_layers + 1) * TINY.d_model
  attn = 3 * TINY.n_layers * 2 * TINY.n_heads * TINY.dh * T
  assert TINY.flops_per_token(T) == 6 * (TINY.param_count() - norms) + attn


def _torch_loss(weights: dict, batch: dict, tmp_path: Path) -> float:
  model_cfg, train_cfg = to_dict(TINY), to_dict(TrainConfig(steps=10, warmup_steps=2))
  if importlib.util.find_spec("torch") is not None:
    from jaxtok_experiments import torch_lm
    return torch_lm.Session(model_cfg, train_cfg, batch, weights).init_loss()
  python = os.environ.get("JAXTOK_TORCH_PYTHON")
  if not python:
    pytest.skip("torch is not importable (set JAXTOK_TORCH_PYTHON to an interpreter with torch "
                "to check the replica through a subprocess)")
  data = tmp_path / "data.npz"
  np.savez(data, **batch, **weights)
  script = Path(bench_train.__file__).with_name("torch_lm.py")
  out = subprocess.run([python, str(script), "--model", json.dumps(model_cfg), "--train",
                        json.dumps(train_cfg), "--data", str(data), "--steps", "0"],
                       check=True, capture_output=True, text=True)
  return json.loads(out.stdout.splitlines()[-1])["loss"]


def test_torch_replica_matches_jaxtok_loss(tmp_path):
  graphdef, params = nnx.split(init_model(TINY), nnx.Param)
  # Larger-than-init weights so attention, RoPE and the GQA grouping move the loss well away
  # from log(V): a replica that got any of them wrong would not agree to 1e-4.
  rng = np.random.default_rng(1)
  weights = {k: (v if k.endswith("scale") else rng.normal(0, 0.3, v.shape)).astype(np.float32)
             + (rng.normal(0, 0.1, v.shape).astype(np.float32) if k.endswith("scale") else 0)
             for k, v in bench_train.flat_params(params).items()}
  nested = {}
  for name, w in weights.items():
    *path, leaf = name.split(".")
    d = nested
    for p in path:
      d = d.setdefault(int(p) if p.isdigit() else p, {})
    d[leaf] = jnp.asarray(w)
  nnx.replace_by_pure_dict(params, nested)
  batch = bench_train.make_batch(B, T, 256, seed=3)
  jax_loss = float(jnp.mean(next_token_loss(
      graphdef, params, {k: jnp.asarray(v) for k, v in batch.items()}, None)[1].nll_BxT))
  assert abs(jax_loss - math.log(256)) > 0.1  # the check is not trivially uniform
  assert _torch_loss(weights, batch, tmp_path) == pytest.approx(jax_loss, abs=1e-4)
