"""Train-step benchmark: `jaxtok bench train [--preset cpu] [--torch-python PATH] [--out F.json]`.

Times the ``lm`` experiment's compiled train step (forward, backward, clipping, AdamW) on one
fixed batch and reports tokens/s and achieved FLOP/s, with FLOPs counted by
``ModelConfig.flops_per_token`` (6N + attention scores), next to this machine's float32 matmul
peak measured in the same process (best of large square ``jnp.dot``s): the ratio is the model
FLOP utilisation (MFU). When PyTorch is available - importable here, or through another
interpreter given by ``--torch-python`` that runs ``torch_lm.py`` as a server - the same model
(same weights: the init losses are checked to agree) on the same batch is timed in plain PyTorch.
Rounds of jax, torch and the matmul peak alternate, so the noise of a shared machine hits all of
them alike (DESIGN.md decision 11); the table reports medians over rounds.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxtok bench train", description=__doc__.splitlines()[0])
  p.add_argument("--exp", default="lm", help="experiment whose model/data/train config is timed")
  p.add_argument("--preset", default="cpu", choices=["smoke", "cpu", "pod"])
  p.add_argument("--set", dest="overrides", action="append", default=[], metavar="A.B=V")
  p.add_argument("--steps", type=int, default=5, help="train steps per timed round")
  p.add_argument("--repeats", type=int, default=5, help="alternating rounds (median reported)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  p.add_argument("--peak-sizes", default="2048,4096",
                 help="comma-separated square fp32 matmul sizes timed for the peak")
  p.add_argument("--torch-python", default=None,
                 help="interpreter with torch, used when torch is not importable here")
  p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
  p.add_argument("--out", default=None, help="write the results as JSON here")
  return p


def flat_params(params) -> dict[str, np.ndarray]:
  """nnx.State -> {"blocks.0.attn.wq": array, ...} (the names torch_lm uses)."""
  from flax import nnx

  out = {}

  def walk(d, prefix):
    for k, v in d.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = np.array(v, np.float32, copy=True)  # state is donated later
  walk(nnx.to_pure_dict(params), "")
  return out


def make_batch(batch_size: int, seq_len: int, vocab: int, seed: int = 0) -> dict[str, np.ndarray]:
  toks = np.random.default_rng(seed).integers(0, vocab, (batch_size, seq_len + 1), np.int32)
  return {"inputs": toks[:, :-1].copy(), "targets": toks[:, 1:].copy(),
          "weights": np.ones((batch_size, seq_len), np.float32)}


def matmul_peak(sizes: list[int], reps: int = 2) -> dict[int, float]:
  """Best fp32 FLOP/s of an n x n @ n x n jitted matmul for each n."""
  import jax
  import jax.numpy as jnp

  out = {}
  for n in sizes:
    a = jax.random.normal(jax.random.key(n), (n, n), jnp.float32)
    f = jax.jit(lambda x, y: jnp.dot(x, y, precision="highest"))
    f(a, a).block_until_ready()
    best = float("inf")
    for _ in range(reps):
      t0 = time.perf_counter()
      f(a, a).block_until_ready()
      best = min(best, time.perf_counter() - t0)
    out[n] = 2.0 * n ** 3 / best
  return out


class JaxTrainer:
  """The experiment's compiled, donated train step on one fixed batch."""

  def __init__(self, cfg, batch: dict[str, np.ndarray]):
    import jax

    from jaxtok.train import loop
    from jaxtok.train.losses import next_token_loss

    self.s = loop.setup(loop.transformer_factory(cfg.model), cfg.train, cfg.mesh)
    self.state = loop.init_state(self.s, cfg.train.seed)
    self.batch = loop.to_global(batch, self.s.batch_sharding)
    self.weights = flat_params(self.state.params)
    loss, _ = jax.jit(lambda p, b: next_token_loss(self.s.graphdef, p, b, None))(
        self.state.params, self.batch)
    self.init_loss = float(loss)
    self.step_fn = loop.compile_train_step(self.s)
    t0 = time.perf_counter()
    self.time_steps(1)
    self.compile_s = time.perf_counter() - t0

  def time_steps(self, steps: int) -> float:
    """Wall time of ``steps`` back-to-back steps (dispatch is asynchronous, as in training)."""
    import jax

    t0 = time.perf_counter()
    for _ in range(steps):
      self.state, _ = self.step_fn(self.state, self.batch)
    jax.block_until_ready(self.state)
    return time.perf_counter() - t0


class TorchInProcess:
  def __init__(self, model_cfg: dict, train_cfg: dict, batch, weights):
    from jaxtok_experiments import torch_lm
    import torch

    self.session = torch_lm.Session(model_cfg, train_cfg, batch, weights)
    self.info = {"torch": torch.__version__, "threads": torch.get_num_threads(),
                 "where": "in-process"}

  def init_loss(self) -> float:
    return self.session.init_loss()

  def time_steps(self, steps: int) -> float:
    return float(sum(self.session.time_steps(steps)))

  def set_threads(self, n: int) -> None:
    self.session.handle({"cmd": "threads", "n": n})

  def close(self):
    pass


class TorchSubprocess:
  """torch_lm.py --serve under another interpreter; one JSON line per command."""

  def __init__(self, python: str, model_cfg: dict, train_cfg: dict, batch, weights):
    self.tmp = tempfile.TemporaryDirectory(prefix="jaxtok-bench-train-")
    data = Path(self.tmp.name) / "data.npz"
    np.savez(data, **batch, **weights)
    script = Path(__file__).with_name("torch_lm.py")
    self.proc = subprocess.Popen(
        [python, str(script), "--model", json.dumps(model_cfg), "--train", json.dumps(train_cfg),
         "--data", str(data), "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True, cwd=self.tmp.name)
    self.info = {**self._read(), "where": python}

  def _read(self) -> dict:
    line = self.proc.stdout.readline()
    if not line:
      raise RuntimeError(f"torch_lm.py under {self.proc.args[0]} exited with code "
                         f"{self.proc.wait()} (see its stderr above)")
    out = json.loads(line)
    if "error" in out:
      raise RuntimeError(f"torch_lm.py: {out['error']}")
    return out

  def _ask(self, cmd: dict) -> dict:
    self.proc.stdin.write(json.dumps(cmd) + "\n")
    self.proc.stdin.flush()
    return self._read()

  def init_loss(self) -> float:
    return self._ask({"cmd": "loss"})["loss"]

  def time_steps(self, steps: int) -> float:
    return float(sum(self._ask({"cmd": "time", "steps": steps})["times"]))

  def set_threads(self, n: int) -> None:
    self._ask({"cmd": "threads", "n": n})

  def close(self):
    self.proc.stdin.close()
    self.proc.wait(timeout=60)
    self.tmp.cleanup()


def _check_replicable(model_cfg: dict) -> None:
  """The features torch_lm.py replicates (it checks again itself)."""
  for name, want in {"embedding": "learned", "positions": "rope", "rope_axes": 1,
                     "tie_embeddings": True, "extra_heads": (), "dtype": "float32"}.items():
    got = tuple(model_cfg[name]) if name == "extra_heads" else model_cfg[name]
    if got != want:
      raise ValueError(f"torch replica: model.{name}={model_cfg[name]!r} is not replicated "
                       f"(needs {want!r})")


def _torch_runner(args, model_cfg, train_cfg, batch, weights):
  if args.no_torch:
    return None, "skipped (--no-torch)"
  try:
    import torch  # noqa: F401
    return TorchInProcess(model_cfg, train_cfg, batch, weights), None
  except ImportError:
    pass
  if args.torch_python:
    return TorchSubprocess(args.torch_python, model_cfg, train_cfg, batch, weights), None
  return None, "torch is not importable here; pass --torch-python PATH"


def run(cfg, *, steps: int = 5, repeats: int = 5, warmup: int = 2,
        peak_sizes=(2048, 4096), torch_args=None, log=print) -> dict:
  """Runs the benchmark for an experiment config; returns the results dict."""
  import jax

  from jaxtok.config import to_dict

  b, t = cfg.data.batch_size, cfg.data.seq_len
  tokens_per_step = b * t
  flops_per_step = cfg.model.flops_per_token(t) * tokens_per_step
  batch = make_batch(b, t, cfg.model.vocab_size, cfg.train.seed)
  jx = JaxTrainer(cfg, batch)
  model_cfg, train_cfg = to_dict(cfg.model), to_dict(cfg.train)
  torch_run, torch_note = None, "not requested"
  if torch_args is not None:
    try:
      _check_replicable(model_cfg)
      torch_run, torch_note = _torch_runner(torch_args, model_cfg, train_cfg, batch, jx.weights)
    except ValueError as e:
      torch_note = str(e)
  torch_loss = None
  if torch_run is not None:
    torch_loss = torch_run.init_loss()
    torch_run.time_steps(max(warmup, 1))
    # Give torch its best intra-op thread count: on a loaded machine its OpenMP pool can be far
    # slower with every core than with one (measured here: 50x at the smoke size).
    by_threads = {}
    for n in sorted({1, os.cpu_count() or 1}):
      torch_run.set_threads(n)
      by_threads[n] = torch_run.time_steps(1)
    torch_run.set_threads(min(by_threads, key=by_threads.get))
    torch_run.info.update(threads=min(by_threads, key=by_threads.get),
                          step_s_by_threads={str(k): v for k, v in by_threads.items()})
  jx.time_steps(warmup)

  rounds, peaks = [], []
  try:
    for r in range(repeats):
      peaks.append(matmul_peak(list(peak_sizes)))
      row = {}
      order = ("jax", "torch") if r % 2 == 0 else ("torch", "jax")
      for who in order:
        if who == "jax":
          row["jax_step_s"] = jx.time_steps(steps) / steps
        elif torch_run is not None:
          row["torch_step_s"] = torch_run.time_steps(steps) / steps
      row["peak_flops_per_s"] = max(peaks[-1].values())
      rounds.append(row)
      log(f"  round {r + 1}/{repeats}: " + ", ".join(f"{k}={v:.4g}" for k, v in row.items()))
  finally:
    if torch_run is not None:
      torch_run.close()

  jax_step = float(np.median([r["jax_step_s"] for r in rounds]))
  peak = max(max(p.values()) for p in peaks)
  peak_by_size = {str(n): max(p[n] for p in peaks) for n in peak_sizes}
  out = {
      "exp_config": {"model": model_cfg, "batch_size": b, "seq_len": t},
      "device": str(jax.devices()[0].device_kind), "n_devices": jax.device_count(),
      "cpu_count": os.cpu_count(), "steps_per_round": steps, "repeats": repeats,
      "tokens_per_step": tokens_per_step, "flops_per_token": cfg.model.flops_per_token(t),
      "flops_per_step": flops_per_step, "compile_s": jx.compile_s,
      "jax": {"step_s": jax_step, "tokens_per_s": tokens_per_step / jax_step,
              "flops_per_s": flops_per_step / jax_step, "init_loss": jx.init_loss},
      "peak_flops_per_s": peak, "peak_flops_per_s_by_size": peak_by_size,
      "mfu": flops_per_step / jax_step / peak,
      "rounds": rounds, "torch": None, "torch_note": torch_note,
  }
  # Per-round MFU against that round's own peak: the same noise hits both.
  out["mfu_per_round_median"] = float(np.median(
      [flops_per_step / r["jax_step_s"] / r["peak_flops_per_s"] for r in rounds]))
  if torch_run is not None:
    torch_step = float(np.median([r["torch_step_s"] for r in rounds]))
    out["torch"] = {
        **torch_run.info, "step_s": torch_step, "tokens_per_s": tokens_per_step / torch_step,
        "flops_per_s": flops_per_step / torch_step, "mfu": flops_per_step / torch_step / peak,
        "init_loss": torch_loss, "init_loss_abs_diff": abs(torch_loss - jx.init_loss)}
    # Ratio of the per-round ratios' median: each round's jax and torch timings are adjacent.
    out["ratio_jax_over_torch"] = float(np.median(
        [r["torch_step_s"] / r["jax_step_s"] for r in rounds]))
  return out


def format_table(res: dict) -> str:
  m = res["exp_config"]["model"]
  head = (f"train step: d_model={m['d_model']} layers={m['n_layers']} heads={m['n_heads']} "
          f"d_ff={m['d_ff']} vocab={m['vocab_size']} batch={res['exp_config']['batch_size']} "
          f"seq={res['exp_config']['seq_len']} | {res['flops_per_step'] / 1e9:.2f} GFLOP/step | "
          f"{res['device']} x{res['n_devices']}, {res['cpu_count']} cpus")
  rows = [("impl", "step ms", "tokens/s", "GFLOP/s", "peak GFLOP/s", "MFU", "vs torch")]
  j, peak = res["jax"], res["peak_flops_per_s"]
  ratio = res.get("ratio_jax_over_torch")
  rows.append(("jaxtok (jit)", f"{j['step_s'] * 1e3:.1f}", f"{j['tokens_per_s']:.0f}",
               f"{j['flops_per_s'] / 1e9:.1f}", f"{peak / 1e9:.1f}", f"{res['mfu']:.1%}",
               f"{ratio:.2f}x" if ratio is not None else "-"))
  tr = res["torch"]
  if tr is not None:
    rows.append((f"torch {tr['torch']}", f"{tr['step_s'] * 1e3:.1f}",
                 f"{tr['tokens_per_s']:.0f}", f"{tr['flops_per_s'] / 1e9:.1f}",
                 f"{peak / 1e9:.1f}", f"{tr['mfu']:.1%}", "1.00x"))
  widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
  lines = [head] + ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
  lines.append(f"MFU = achieved / best fp32 matmul peak "
               f"({', '.join(f'{n}^2: {v / 1e9:.1f}' for n, v in res['peak_flops_per_s_by_size'].items())}"
               f" GFLOP/s); per-round MFU median {res['mfu_per_round_median']:.1%}")
  if tr is not None:
    lines.append(f"same model check: init loss jax {j['init_loss']:.6f} torch "
                 f"{tr['init_loss']:.6f} (|diff| {tr['init_loss_abs_diff']:.1e}); "
                 f"vs torch = torch step time / jax step time, median of per-round ratios")
  else:
    lines.append(f"torch: {res['torch_note']}")
  return "\n".join(lines)


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from jaxtok_experiments import runner

  cfg = runner.make_config(args.exp, args.preset, args.overrides)
  sizes = tuple(int(s) for s in args.peak_sizes.split(",") if s)
  res = run(cfg, steps=args.steps, repeats=args.repeats, warmup=args.warmup, peak_sizes=sizes,
            torch_args=args, log=lambda s: print(s, file=sys.stderr))
  res["preset"], res["exp"] = args.preset, args.exp
  print(format_table(res))
  if args.out:
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2))
    print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
