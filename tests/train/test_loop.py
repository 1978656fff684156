"""Training loop: NaN detection, checkpoints, kill-and-resume determinism, device-count change."""
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jaxtok.ckpt import CheckpointError, Checkpointer
from jaxtok.data.sources import TokenWindows
from jaxtok.nn import ModelConfig
from jaxtok.sharding import MeshConfig
from jaxtok.train.config import TrainConfig
from jaxtok.train.loop import train, transformer_factory

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
  path = run_dir / "metrics.jsonl"
  records = []
  for line in path.read_text().splitlines() if path.exists() else []:
    try:
      records.append(json.loads(line))
    except ValueError:  # being written by the live run
      pass
  return {r["step"]: r["loss"] for r in records if "loss" in r}


def _run(args, devices=1):
  proc = _jaxtok(args, devices)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  return out


def _wait_for(proc, run_dir: Path, step: int, timeout: float = 300) -> None:
  """Until training has logged ``step`` and saved some checkpoint."""
  deadline = time.time() + timeout
  while time.time() < deadline and proc.poll() is None:
    ckpts = run_dir / "checkpoints"
    if (ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()) and
        (run_dir / "metrics.jsonl").exists() and max(_losses(run_dir) or [0]) >= step):
      return
    time.sleep(0.02)
  raise AssertionError(f"training ended or stalled before step {step}: "
                       f"{proc.communicate()[1][-2000:] if proc.poll() is not None else ''}")


def test_chaos_kills_and_preemption_resume_to_the_uninterrupted_curve(tmp_path, capsys):
  """SIGKILL and SIGTERM at random steps, each followed by --resume; the default time-based
  checkpoint cadence (shrunk); a second run into the live directory fails and mixes nothing."""
  from jaxtok.cli import main
  steps = ["train.steps=300", "train.warmup_steps=10", "train.ckpt_minutes=0.002"]
  args = ["run", "lm", "--preset", "smoke", *sum((["--set", s] for s in TINY + steps), [])]
  ref_proc = _jaxtok(args + ["--out", str(tmp_path / "ref")])  # runs beside the chaos chain

  run_dir = tmp_path / "killed" / "lm" / "smoke"
  killed = args + ["--out", str(tmp_path / "killed")]
  rng = random.Random(15)
  proc = _jaxtok(killed)
  for trial, sig in enumerate([signal.SIGKILL, signal.SIGTERM, signal.SIGKILL]):
    low = max(_losses(run_dir) or [0])
    _wait_for(proc, run_dir, rng.randint(low + 5, low + 60))
    if trial == 0:  # the directory is held: another run (even --overwrite) fails at once
      for extra in ([], ["--resume"], ["--overwrite"]):
        assert main(killed + extra) == 2
        assert f"in use by another run (pid {proc.pid}" in capsys.readouterr().err
    assert proc.poll() is None, "training finished before it could be stopped"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=300)
    if sig == signal.SIGTERM:  # preemption: save, then exit 143 with one line
      assert proc.returncode == 143, err[-2000:]
      saved = int(err.split("stopped by SIGTERM at step ")[1].split(";")[0])
      assert (run_dir / "checkpoints" / str(saved)).is_dir()
      assert max(_losses(run_dir)) == saved
    else:
      assert proc.returncode == -signal.SIGKILL
    proc = _jaxtok(killed + ["--resume"])
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 0, err[-3000:]
  assert "resume: restored step" in err

  out, err = ref_proc.communicate(timeout=600)
  assert ref_proc.returncode == 0, err[-3000:]
  ref, resumed = _losses(tmp_path / "ref" / "lm" / "smoke"), _losses(run_dir)
  assert sorted(resumed) == sorted(ref) == list(range(1, 301))
  assert [resumed[s] for s in sorted(ref)] == [ref[s] for s in sorted(ref)]
  # One record per step: nothing from a killed session or the refused runs is mixed in.
  lines = (run_dir / "metrics.jsonl").read_text().splitlines()
  assert len(lines) == len((tmp_path / "ref" / "lm" / "smoke" / "metrics.jsonl").read_text(
      ).splitlines())


def test_restore_onto_a_different_device_count(tmp_path):
  base = ["run", "lm", "--preset", "smoke", "--out", str(tmp_path),
          *sum((["--set", s] for s in TINY), []), "--set", "train.warmup_steps=2"]
  _run(base + ["--set", "train.steps=6", "--set", "mesh.data=4", "--set", "mesh.fsdp=2",
               "--set", "data.batch_size=8"], devices=8)
  out = _run(base + ["--set", "train.steps=8", "--set", "data.batch_size=8", "--resume"],
             devices=1)
  assert json.loads(out)["claims"]
  assert max(_losses(tmp_path / "lm" / "smoke")) == 8


def _train_tiny(tmp_path, source, steps=3, resume=False, train_kw=None, model_kw=None, val=None,
                **kw):
  model = ModelConfig(**{**dict(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32,
                                max_len=8), **(model_kw or {})})
  cfg = TrainConfig(steps=steps, warmup_steps=1, progress=False, eval_every=100,
                    **(train_kw or {}))
  val = val or [{"inputs": np.zeros((2, 8), np.int32), "targets": np.zeros((2, 8), np.int32),
                 "weights": np.ones((2, 8), np.float32)}]
  return train(transformer_factory(model), cfg, MeshConfig(data=1), train_source=source,
               val_batches=val, batch_size=2, out_dir=tmp_path, config_dict={"model": {"d": 16}, **kw},
               resume=resume)


def _params(out):
  return [np.asarray(x) for x in jax.tree.leaves(out["state"].params)]


class NaNWeights(TokenWindows):
  def __getitem__(self, index):
    out = super().__getitem__(index)
    if index >= 0:
      out["weights"] = np.full(len(out["tokens"]) - 1, np.nan, np.float32)
    return out


def test_nan_loss_raises_with_the_step(tmp_path):
  with pytest.raises(FloatingPointError, match="at step 1"):
    _train_tiny(tmp_path, NaNWeights(np.arange(200) % 16, 8))


SOURCE = TokenWindows(np.arange(200) % 16, 8)


@pytest.fixture(scope="module")
def ref4(tmp_path_factory):
  """One uninterrupted 4-step run at the default (time-based) cadence, shrunk so that every step
  is due; the tests below copy its directory instead of training again."""
  d = tmp_path_factory.mktemp("ref4")
  saved, real = [], Checkpointer.save

  def record(self, step, *a):
    saved.append(step)
    return real(self, step, *a)

  Checkpointer.save = record
  try:
    out = _train_tiny(d, SOURCE, steps=4, train_kw={"ckpt_minutes": 1e-9, "log_every": 1})
  finally:
    Checkpointer.save = real
  return {"dir": d, "out": out, "params": _params(out), "saved": saved}


def _copy(ref4, dst: Path) -> Path:
  shutil.copytree(ref4["dir"], dst, ignore=shutil.ignore_patterns(".lock"))
  return dst


def test_checkpoints_by_time_by_default_and_never_over_another_run(ref4, tmp_path):
  assert TrainConfig().ckpt_every == 0 and 0 < TrainConfig().ckpt_minutes <= 10
  assert ref4["saved"] == [1, 2, 3, 4]
  run = _copy(ref4, tmp_path / "run")
  with pytest.raises(ValueError, match="already holds another run's checkpoints .*step 4"):
    _train_tiny(run, SOURCE, steps=4)


def test_checkpoint_errors(ref4, tmp_path):
  run = _copy(ref4, tmp_path / "run")
  ckpt = Checkpointer(run / "checkpoints")
  with pytest.raises(CheckpointError, match="model.d: checkpoint has 16, config has 32"):
    ckpt.restore(ref4["out"]["state"], {"model": {"d": 32}})
  with pytest.raises(CheckpointError, match="no checkpoint"):
    Checkpointer(tmp_path / "empty").restore(ref4["out"]["state"], {})
  with pytest.raises(CheckpointError, match="already holds step 4; refusing to save step 3"):
    ckpt.save(3, ref4["out"]["state"], {}, {})  # orbax would skip it without a word
  for step in (3, 4):
    for f in (run / "checkpoints" / str(step) / "state").rglob("*"):
      if f.is_file() and f.stat().st_size > 0:
        f.write_bytes(b"\0garbage")
  with pytest.raises(CheckpointError, match="no intact checkpoint") as e:
    Checkpointer(run / "checkpoints").restore(ref4["out"]["state"], {"model": {"d": 16}})
  assert len(str(e.value)) < 1000  # not kilobytes of TensorStore spec


def test_a_corrupt_newest_checkpoint_falls_back_to_the_intact_one(ref4, tmp_path, capsys):
  run = _copy(ref4, tmp_path / "run")
  for f in (run / "checkpoints" / "4" / "state").rglob("*"):
    if f.is_file() and f.stat().st_size > 0:
      f.write_bytes(f.read_bytes()[:5])  # truncated, as by a crash mid-copy
  out = _train_tiny(run, SOURCE, steps=4, resume=True)
  log = capsys.readouterr().err
  assert "skipped checkpoint 4" in log and "restored step 3 of 4" in log
  assert "\n" not in log.split("skipped checkpoint 4 (")[1].split(")")[0]  # one short line
  assert (run / "checkpoints.corrupt" / "4").is_dir()
  assert all(np.array_equal(a, b) for a, b in zip(_params(out), ref4["params"]))
  assert Checkpointer(run / "checkpoints").latest_step() == 4  # saved again


def test_a_full_disk_loses_nothing_already_saved(ref4, tmp_path, monkeypatch):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler as jh
  run = _copy(ref4, tmp_path / "run")
  shutil.rmtree(run / "checkpoints" / "4")  # as if the run had been stopped after step 3
  real = jh.JsonCheckpointHandler._save_fn

  async def full(self, x, directory):  # orbax's own writer, failing as a full disk does
    raise OSError(errno.ENOSPC, "No space left on device", str(directory))

  monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", full)
  with pytest.raises(CheckpointError) as e:
    _train_tiny(run, SOURCE, steps=4, resume=True)
  msg = str(e.value)
  assert "\n" not in msg and "No space left on device" in msg, msg
  assert "the checkpoint at step 3 is intact" in msg and "--resume" in msg
  monkeypatch.setattr(jh.JsonCheckpointHandler, "_save_fn", real)
  out = _train_tiny(run, SOURCE, steps=4, resume=True, train_kw={"log_every": 1})
  assert all(np.array_equal(a, b) for a, b in zip(_params(out), ref4["params"]))
  # The returned curve (what figures are drawn from) is the whole run's, not the resumed part.
  assert [h["step"] for h in out["history"]] == [1, 2, 3, 4]
  assert [h["loss"] for h in out["history"]] == [h["loss"] for h in ref4["out"]["history"]]


def test_bad_ids_and_positions_fail_on_the_host_before_a_step(tmp_path):
  from jaxtok.config import ConfigError
  with pytest.raises(ValueError, match=r"train batch 0 inputs: token ids must be in \[0, "
                     r"model.vocab_size=16\), found range \[0, 16\]"):
    _train_tiny(tmp_path / "a", TokenWindows(np.arange(200) % 17, 8))
  with pytest.raises(ValueError, match=r"found range \[-1, "):
    _train_tiny(tmp_path / "b", TokenWindows(np.arange(200) % 16 - 1, 8))
  bad_val = [{"inputs": np.zeros((2, 8), np.int32), "targets": np.full((2, 8), 99, np.int32),
              "weights": np.ones((2, 8), np.float32)}]
  with pytest.raises(ValueError, match="validation batch 0 targets"):
    _train_tiny(tmp_path / "c", SOURCE, val=bad_val)
  with pytest.raises(ConfigError, match=r"model.max_len: expected >= the batches' sequence "
                     r"length 8 \(data.seq_len\) with model.positions='learned'"):
    _train_tiny(tmp_path / "d", SOURCE, model_kw={"positions": "learned", "max_len": 4})
  assert not any((tmp_path / n / "checkpoints").exists() for n in "abcd")


def test_ids_inside_jit_default_and_checkify_debug_mode():
  """Inside jit the gather is silent (id >= V: NaN logits on every position; id < 0: wraps),
  which is why ids are checked on the host; the checkify debug mode catches them in jit."""
  import jax.numpy as jnp
  from flax import nnx
  from jax.experimental import checkify

  from jaxtok.data import pipeline
  from jaxtok.nn import forward, init_model
  cfg = ModelConfig(vocab_size=16, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=8)
  graphdef, params = nnx.split(init_model(cfg, 0), nnx.Param)
  fwd = jax.jit(lambda t: forward(graphdef, params, t, jnp.arange(4)[None]).logits)
  ok = fwd(jnp.array([[1, 2, 3, 15]]))
  assert np.isnan(np.asarray(fwd(jnp.array([[1, 2, 3, 16]])))).all()  # default: silent NaN
  np.testing.assert_array_equal(fwd(jnp.array([[1, 2, 3, -1]])), ok)  # default: wraps
  with pytest.raises(ValueError, match=r"tokens_BxT: token ids must be in \[0, model.vocab_size"
                     r"=16\), found range \[-1, 3\]"):
    pipeline.check_token_range(jnp.array([[1, 2, 3, -1]]), 16, "tokens_BxT")  # concrete: host

  def checked(t):
    pipeline.check_token_range(t, cfg.vocab_size, "tokens_BxT")
    return t + 1

  jax.jit(checked)(jnp.array([[1, 99]]))  # traced, default mode: no check staged
  with pipeline.checkify_ids():
    err, _ = jax.jit(checkify.checkify(checked))(jnp.array([[1, 99]]))
    ok_err, _ = jax.jit(checkify.checkify(checked))(jnp.array([[1, 15]]))
  assert ok_err.get() is None
  with pytest.raises(Exception, match=r"found range \[1, 99\]"):
    err.throw()
