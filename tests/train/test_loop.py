"""Training loop: NaN detection, checkpoints, kill-and-resume determinism, device-count change."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from jaxtok.ckpt import CheckpointError, Checkpointer
from jaxtok.data.sources import TokenWindows
from jaxtok.nn import ModelConfig
from jaxtok.sharding import MeshConfig
from jaxtok.train.config import TrainConfig
from jaxtok.train.loop import train

TINY = ["model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.n_layers=1",
        "model.max_len=32", "data.seq_len=32", "data.batch_size=4",
        "data.max_train_bytes=300000", "data.max_val_bytes=20000", "data.val_batches=1",
        "train.eval_every=1000", "train.log_every=1", "train.progress=false", "mesh.data=1"]


def _jaxtok(args, devices=1, **popen):
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
         "JAX_PLATFORMS": "cpu"}
  return subprocess.Popen([sys.executable, "-m", "jaxtok.cli", *args], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def _losses(run_dir: Path) -> dict[int, float]:
  records = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
  return {r["step"]: r["loss"] for r in records if "loss" in r}


def _run(args, devices=1):
  proc = _jaxtok(args, devices)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return out


def test_sigkill_and_resume_reproduces_the_loss_curve(tmp_path):
  steps = ["train.steps=300", "train.warmup_steps=10", "train.ckpt_every=10"]
  args = ["run", "lm", "--preset", "smoke", *sum((["--set", s] for s in TINY + steps), [])]
  _run(args + ["--out", str(tmp_path / "ref")])
  ref = _losses(tmp_path / "ref" / "lm" / "smoke")

  run_dir = tmp_path / "killed" / "lm" / "smoke"
  proc = _jaxtok(args + ["--out", str(tmp_path / "killed")])
  deadline = time.time() + 300
  while time.time() < deadline:  # kill once a checkpoint exists and training has moved on
    metrics = run_dir / "metrics.jsonl"
    if (run_dir / "checkpoints" / "20").exists() and metrics.exists() and max(
        _losses(run_dir) or [0]) >= 25:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "training finished before it could be killed"
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = max(_losses(run_dir))
  assert killed_at < 300

  _run(args + ["--out", str(tmp_path / "killed"), "--resume"])
  resumed = _losses(run_dir)
  assert sorted(resumed) == sorted(ref) == list(range(1, 301))
  assert [resumed[s] for s in sorted(ref)] == [ref[s] for s in sorted(ref)]


def test_restore_onto_a_different_device_count(tmp_path):
  base = ["run", "lm", "--preset", "smoke", "--out", str(tmp_path),
          *sum((["--set", s] for s in TINY), []), "--set", "train.warmup_steps=2"]
  _run(base + ["--set", "train.steps=6", "--set", "mesh.data=4", "--set", "mesh.fsdp=2",
               "--set", "data.batch_size=8"], devices=8)
  out = _run(base + ["--set", "train.steps=8", "--set", "data.batch_size=8", "--resume"],
             devices=1)
  assert json.loads(out)["claims"]
  assert max(_losses(tmp_path / "lm" / "smoke")) == 8


def _train_tiny(tmp_path, source, steps=3, **kw):
  model = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=8)
  cfg = TrainConfig(steps=steps, warmup_steps=1, progress=False, eval_every=100)
  val = [{"inputs": np.zeros((2, 8), np.int32), "targets": np.zeros((2, 8), np.int32),
          "weights": np.ones((2, 8), np.float32)}]
  return train(model, cfg, MeshConfig(data=1), train_source=source, val_batches=val,
               batch_size=2, out_dir=tmp_path, config_dict={"model": {"d": 16}, **kw})


class NaNWeights(TokenWindows):
  def __getitem__(self, index):
    out = super().__getitem__(index)
    if index >= 0:
      out["weights"] = np.full(len(out["tokens"]) - 1, np.nan, np.float32)
    return out


def test_nan_loss_raises_with_the_step(tmp_path):
  with pytest.raises(FloatingPointError, match="at step 1"):
    _train_tiny(tmp_path, NaNWeights(np.arange(200) % 16, 8))


def test_checkpoint_errors(tmp_path):
  out = _train_tiny(tmp_path, TokenWindows(np.arange(200) % 16, 8))
  ckpt = Checkpointer(tmp_path / "checkpoints")
  with pytest.raises(CheckpointError, match="model.d: checkpoint has 16, config has 32"):
    ckpt.restore(out["state"], {"model": {"d": 32}})
  with pytest.raises(CheckpointError, match="no checkpoint"):
    Checkpointer(tmp_path / "empty").restore(out["state"], {})
  for f in (tmp_path / "checkpoints" / "3" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(b"\0garbage")
  with pytest.raises(CheckpointError):
    Checkpointer(tmp_path / "checkpoints").restore(out["state"], {"model": {"d": 16}})
