"""Experiment ``nar``: neighboring autoregressive modeling vs raster AR (He et al., arXiv
2503.10696), same backbone, same batches, the one train step.

1. A synthetic 8 x 8 causal field (``jaxtok.data.fields.CausalField``) with exact likelihood: NLL per
   token of NAR and raster AR against the true entropy; the Table 5 analogue (mixed logits vs one
   head where neighbours overlap); the true log-likelihood of NAR samples; and the negative
   control (a same-diagonal dependency), where NAR must lose to raster AR, compared with the
   exact gap of the best NAR-factorised model (``CausalField.nar_log_prob``).
2. scikit-learn's digits (8 x 8, 16 grey levels; 16 x 16 bilinear upsampled in ``pod``),
   class-conditional with classifier-free guidance: NLL, samples per class (PNG), the accuracy a
   logistic-regression classifier trained on real digits gives the samples' intended classes.
3. Speed: forward passes and generation wall time, NAR vs raster AR, batch 1 and 64, at 8 x 8
   (trained models) and 16 x 16 (same-size models; speed does not depend on the weights).
   ``main`` is the ``jaxtok bench nar`` entry (16 x 16 only).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok import nar
from jaxtok.config import require, to_dict
from jaxtok.data.digits import digits
from jaxtok.data.fields import CausalField, FieldSource, GridArrays
from jaxtok.data.pipeline import fixed_batches
from jaxtok.decode import Model
from jaxtok.nn import init_model
from jaxtok.sharding import MeshConfig
from jaxtok.train.config import TrainConfig
from jaxtok.train.loop import train, transformer_factory
from jaxtok_experiments import plots
from jaxtok_experiments.runner import Claim


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  field_n: int = 8
  field_vocab: int = 8
  field_alpha: float = 0.3
  field_steps: int = 800
  digit_levels: int = 16
  digit_sizes: tuple[int, ...] = (8,)  # 16: the bilinear 2x upsampled digits
  digit_steps: int = 800
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  d_ff: int = 128
  batch_size: int = 32
  lr: float = 3e-3
  warmup_steps: int = 50
  cond_dropout: float = 0.1
  cfg_scale: float = 2.0
  temperature: float = 1.0
  eval_grids: int = 1024  # held-out field grids
  sample_batches: int = 6  # batches of `batch_size` class-conditional samples per model
  speed_sizes: tuple[int, ...] = (8, 16)
  speed_batches: tuple[int, ...] = (1, 64)
  speed_repeats: int = 5
  seed: int = 0

  def __post_init__(self):
    for name in ("field_n", "field_steps", "digit_steps", "d_model", "n_layers", "batch_size",
                 "eval_grids", "sample_batches", "speed_repeats"):
      require(getattr(self, name) > 0, name, "a positive integer", getattr(self, name))
    require(self.field_vocab >= 2, "field_vocab", ">= 2", self.field_vocab)
    require(all(s in (8, 16) for s in self.digit_sizes), "digit_sizes", "sizes in (8, 16)",
            self.digit_sizes)
    require(2 <= self.digit_levels <= 17, "digit_levels", "in [2, 17]", self.digit_levels)
    require(self.cfg_scale >= 0, "cfg_scale", ">= 0", self.cfg_scale)


def smoke() -> Config:
  return Config(field_n=4, field_steps=30, digit_steps=30, d_model=32, n_layers=1, d_ff=64,
                batch_size=16, warmup_steps=5, eval_grids=64, sample_batches=1,
                speed_sizes=(8,), speed_batches=(16,), speed_repeats=1)


def cpu() -> Config:
  return Config()


def pod() -> Config:
  return Config(field_steps=3000, digit_steps=5000, digit_sizes=(8, 16), d_model=256,
                n_layers=6, n_heads=8, d_ff=768, batch_size=64, lr=1e-3, warmup_steps=200,
                eval_grids=8192, sample_batches=8, speed_repeats=5)


PRESETS = {"smoke": smoke, "cpu": cpu, "pod": pod}


def _model_cfg(cfg: Config, shape, vocab):
  return nar.grid_model_config(shape, vocab, d_model=cfg.d_model, n_layers=cfg.n_layers,
                               n_heads=cfg.n_heads, d_ff=cfg.d_ff)


def _train(cfg: Config, order, vocab, grid_vocab, source, val_source, steps, out_dir, name,
           resume, null_cond=None):
  """Trains one model through the one train loop (checkpoints, resume) with the order's loss;
  returns the trained ``Model``, its loss history and training seconds."""
  tcfg = TrainConfig(steps=steps, lr=cfg.lr, warmup_steps=min(cfg.warmup_steps, steps // 2),
                     seed=cfg.seed, log_every=max(steps // 50, 1), eval_every=steps,
                     progress=False)
  loss_fn = nar.grid_loss_fn(order, grid_vocab, cond_dropout=cfg.cond_dropout
                             if null_cond is not None else 0.0, null_cond=null_cond)
  val = fixed_batches(val_source, cfg.batch_size, 1, example_fn=nar.to_grid_example)
  t0 = time.perf_counter()
  out = train(transformer_factory(_model_cfg(cfg, order.shape, vocab)), tcfg, MeshConfig(),
              train_source=source, val_batches=val, batch_size=cfg.batch_size,
              out_dir=out_dir / name, config_dict={"experiment": to_dict(cfg), "run": name},
              resume=resume, loss_fn=loss_fn, example_fn=nar.to_grid_example)
  history = [{"step": h["step"], "loss": h["loss"]} for h in out["history"]]
  return {"model": out["model"], "history": history, "seconds": time.perf_counter() - t0}


def _sample(cfg, model, order, cond_MxC, grid_vocab, key, guided, null_cond=None):
  grids = []
  for i in range(0, len(cond_MxC), cfg.batch_size):
    key, sub = jax.random.split(key)
    grids.append(np.asarray(nar.generate_grid(
        model, order, jnp.asarray(cond_MxC[i:i + cfg.batch_size]), sub,
        grid_vocab=grid_vocab, temperature=cfg.temperature,
        cfg_scale=cfg.cfg_scale if guided else None, null_cond=null_cond)))
  return np.concatenate(grids)


def speed_table(cfg: Config, sizes, batches, trained: dict | None = None) -> list[dict]:
  """Generation wall time (minimum of interleaved repeats, compile excluded) and forward passes
  per grid, NAR vs raster AR, the same backbone; ``trained[(size, kind)]`` a trained ``Model`` or fresh
  weights (wall time does not depend on them)."""
  rows = []
  levels, n_cls = cfg.digit_levels, 10
  vocab = levels + n_cls + 1
  for size in sizes:
    shape = (size, size)
    fresh = Model.from_module(init_model(_model_cfg(cfg, shape, vocab), cfg.seed))
    for b in batches:
      cond = jnp.asarray((levels + np.arange(b) % n_cls)[:, None], jnp.int32)
      runs = {}
      for kind, make in (("nar", nar.nar_order), ("raster", nar.raster_order)):
        order = make(shape, 1)
        model = (trained or {}).get((size, kind), fresh)
        runs[kind] = (order, functools.partial(
            nar.generate_grid, model, order, cond, grid_vocab=levels,
            temperature=cfg.temperature, cfg_scale=cfg.cfg_scale, null_cond=levels + n_cls))
        runs[kind][1](jax.random.key(0)).block_until_ready()  # compile
      times = {kind: [] for kind in runs}
      for r in range(cfg.speed_repeats):  # interleaved; the minimum is the least disturbed
        for kind, (_, run) in runs.items():
          t0 = time.perf_counter()
          run(jax.random.key(r + 1)).block_until_ready()
          times[kind].append(time.perf_counter() - t0)
      for kind, (order, _) in runs.items():
        sec = float(np.min(times[kind]))
        rows.append({"size": size, "batch": b, "order": kind,
                     "forward_passes": nar.forward_passes(order), "seconds": sec,
                     "grids_per_s": b / sec})
  for r in rows:
    ar = next(x for x in rows if (x["size"], x["batch"], x["order"]) ==
              (r["size"], r["batch"], "raster"))
    r["speedup_vs_raster"] = ar["seconds"] / r["seconds"]
  return rows


def _speed_markdown(rows) -> str:
  lines = ["| grid | batch | order | forward passes | s / batch | grids / s | speed-up |",
           "|---|---|---|---|---|---|---|"]
  lines += [f"| {r['size']}x{r['size']} | {r['batch']} | {r['order']} | {r['forward_passes']} "
            f"| {r['seconds']:.4f} | {r['grids_per_s']:.1f} | {r['speedup_vs_raster']:.2f} |"
            for r in rows]
  return "\n".join(lines)


def _sample_png(grids_MxN, labels_M, size, levels, path: Path, title: str):
  import matplotlib.pyplot as plt
  per = min(np.bincount(labels_M, minlength=10).min(), 8)
  fig, axes = plt.subplots(10, per, figsize=(per * 0.8, 8.4), squeeze=False)
  for c in range(10):
    idx = np.flatnonzero(labels_M == c)[:per]
    for k in range(per):
      ax = axes[c, k]
      ax.axis("off")
      if k < len(idx):
        ax.imshow(grids_MxN[idx[k]].reshape(size, size), cmap="gray_r", vmin=0, vmax=levels - 1)
  fig.suptitle(title, fontsize=9)
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _field_part(cfg: Config, out_dir: Path, summary: dict, resume: bool) -> list[Claim]:
  shape, v = (cfg.field_n, cfg.field_n), cfg.field_vocab
  n = cfg.field_n * cfg.field_n
  claims, res = [], {}
  for control in (False, True):
    field = CausalField(cfg.field_n, v, cfg.seed, alpha=cfg.field_alpha, same_diagonal=control)
    tag = "control" if control else "field"
    val_x = field.sample(np.random.default_rng([cfg.seed, 2]), cfg.eval_grids)
    bos = np.full((len(val_x), 1), v)
    tokens_val = np.concatenate([bos, val_x], 1)
    r = {"entropy": float(-field.log_prob(val_x).mean() / n),
         "nar_bound": float(-field.nar_log_prob(val_x).mean() / n)}
    for kind, make in (("nar", nar.nar_order), ("raster", nar.raster_order)):
      order = make(shape, 1)
      out = _train(cfg, order, v + 1, v, FieldSource(field, cfg.seed + 1, cond_id=v),
                   GridArrays(val_x, bos), cfg.field_steps, out_dir, f"{tag}-{kind}", resume)
      heads = (None, 0, 1) if kind == "nar" else (None,)
      nlls = nar.grid_nll(out["model"], order, tokens_val, v, cfg.batch_size, heads)
      r[kind] = nlls[0]
      r[f"{kind}_train_s"] = out["seconds"]
      if not control:
        samples = _sample(cfg, out["model"], order, bos, v, jax.random.key(cfg.seed),
                          guided=False)
        r[f"{kind}_samples_true_nll"] = float(-field.log_prob(samples).mean() / n)
      if kind == "nar" and not control:
        r["head_vertical"], r["head_horizontal"] = nlls[1:]
        plots.loss_curve(out["history"], [], out_dir / "field_nar_loss.png",
                         baselines={"true entropy": r["entropy"]})
    res[tag] = r
  summary["field"] = res
  f, c = res["field"], res["control"]
  best_head = min(f["head_vertical"], f["head_horizontal"])
  claims += [
      Claim("nar-field-entropy", "2503.10696 (core_papers §4 N4)", "on a field where NAR's "
            "factorisation is exact, NAR's NLL is within 0.05 nats/token of the true entropy",
            round(f["entropy"], 4), round(f["nar"], 4), "ours <= paper_value + 0.05",
            f["nar"] <= f["entropy"] + 0.05),
      Claim("nar-field-vs-raster", "2503.10696 (N4)", "NAR's NLL is within 0.03 nats/token of "
            "raster AR's on the exact field (15 vs 64 steps)", round(f["raster"], 4),
            round(f["nar"], 4), "ours <= paper_value + 0.03", f["nar"] <= f["raster"] + 0.03),
      Claim("nar-samples-loglik", "2503.10696 (N5)", "NAR samples' true NLL per token is within "
            "0.05 nats of held-out data's (raster AR samples: "
            f"{f['raster_samples_true_nll']:.4f})", round(f["entropy"], 4),
            round(f["nar_samples_true_nll"], 4), "|ours - paper_value| <= 0.05",
            abs(f["nar_samples_true_nll"] - f["entropy"]) <= 0.05),
      Claim("nar-mixed-heads", "2503.10696 Table 5", "mixed-head logits beat either single head "
            "used where neighbours overlap (FID 3.06 vs 25.73 / 75.91); NLL nats/token",
            round(best_head, 4), round(f["nar"], 4), "ours < paper_value - 0.05",
            f["nar"] < best_head - 0.05),
      Claim("nar-negative-control", "2503.10696 (N7)", "with a same-diagonal dependency NAR is "
            f"worse than raster AR (exact NAR-factorisation gap {c['nar_bound'] - c['entropy']:.3f}"
            " nats/token); ours = NAR - raster", 0.0, round(c["nar"] - c["raster"], 4),
            "ours > paper_value", c["nar"] > c["raster"]),
  ]
  return claims


def _digits_part(cfg: Config, out_dir: Path, summary: dict, resume: bool) -> tuple:
  from sklearn.linear_model import LogisticRegression
  levels, n_cls = cfg.digit_levels, 10
  vocab, null = levels + n_cls + 1, levels + n_cls
  claims, res, trained = [], {}, {}
  for size in cfg.digit_sizes:
    tr_x, tr_y, te_x, te_y = digits(levels, size, cfg.seed)
    clf = LogisticRegression(max_iter=3000).fit(tr_x, tr_y)
    r = {"classifier_real_acc": float(clf.score(te_x, te_y))}
    tr_c, te_c = (levels + tr_y)[:, None], (levels + te_y)[:, None]
    tokens_te = np.concatenate([te_c, te_x], 1)
    labels = np.arange(cfg.sample_batches * cfg.batch_size) % n_cls
    for kind, make in (("nar", nar.nar_order), ("raster", nar.raster_order)):
      order = make((size, size), 1)
      out = _train(cfg, order, vocab, levels, GridArrays(tr_x, tr_c), GridArrays(te_x, te_c),
                   cfg.digit_steps, out_dir, f"digits{size}-{kind}", resume, null_cond=null)
      r[kind] = nar.grid_nll(out["model"], order, tokens_te, levels, cfg.batch_size)[0]
      r[f"{kind}_train_s"] = out["seconds"]
      samples = _sample(cfg, out["model"], order, (levels + labels)[:, None], levels,
                        jax.random.key(cfg.seed + 1), guided=True, null_cond=null)
      r[f"{kind}_sample_acc"] = float(clf.score(samples, labels))
      _sample_png(samples, labels, size, levels, out_dir / f"digits{size}_{kind}_samples.png",
                  f"{kind} {size}x{size}, CFG {cfg.cfg_scale}, {nar.forward_passes(order)}"
                  f" forward passes")
      trained[(size, kind)] = out["model"]
    res[f"{size}x{size}"] = r
    se = math.sqrt(0.25 / len(labels))  # the largest standard error of an accuracy
    claims += [
        Claim(f"nar-digits{size}-nll", "2503.10696 Table 1", f"NAR models {size}x{size} digits "
              "no worse than raster AR with the same backbone (paper: FID 4.65 NAR-B vs 5.46 "
              "LlamaGen-B); NLL nats/token", round(r["raster"], 4), round(r["nar"], 4),
              "ours <= paper_value", r["nar"] <= r["raster"]),
        Claim(f"nar-digits{size}-samples", "2503.10696 Table 1", "a classifier trained on real "
              f"digits recognises NAR samples' classes as often as raster AR's (CFG "
              f"{cfg.cfg_scale}; real test digits: {r['classifier_real_acc']:.3f})",
              round(r["raster_sample_acc"], 3), round(r["nar_sample_acc"], 3),
              f"ours >= paper_value - 2 SE ({2 * se:.3f})",
              r["nar_sample_acc"] >= r["raster_sample_acc"] - 2 * se),
    ]
  summary["digits"] = res
  return claims, trained


def run(cfg: Config, out_dir: Path, resume: bool = False) -> list[Claim]:
  out_dir = Path(out_dir)
  summary = {}
  claims = _field_part(cfg, out_dir, summary, resume)
  digit_claims, trained = _digits_part(cfg, out_dir, summary, resume)
  claims += digit_claims
  rows = speed_table(cfg, cfg.speed_sizes, cfg.speed_batches, trained)
  summary["speed"] = rows
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
  (out_dir / "speed.md").write_text(_speed_markdown(rows) + "\n")
  for size in cfg.speed_sizes:
    n_steps = nar.forward_passes(nar.nar_order((size, size)))
    claims.append(Claim(f"nar-steps-{size}", "2503.10696 §3.1", f"an {size}x{size} grid takes "
                        "2n-1 forward passes (16x16: 31 vs raster 256)", 2 * size - 1, n_steps,
                        "ours == paper_value", n_steps == 2 * size - 1))
  big = max(cfg.speed_sizes)
  for b in cfg.speed_batches:
    up = next(r for r in rows if (r["size"], r["batch"], r["order"]) == (big, b, "nar"))
    claims.append(Claim(f"nar-speedup-{big}-b{b}", "2503.10696 Table 1 (NAR-B 419.7 vs "
                        "LlamaGen-B 117.9 img/s = 3.56x, A100, max batch)", f"NAR generates "
                        f"{big}x{big} grids at batch {b} at least 4x faster than raster AR with "
                        "the same backbone (the issue's aim on CPU); wall-time ratio",
                        3.56, round(up["speedup_vs_raster"], 2), "ours >= 4",
                        up["speedup_vs_raster"] >= 4))
  return claims


def main(argv: list[str] | None = None) -> int:
  """``jaxtok bench nar``: NAR vs raster AR generation speed, same backbone, one run."""
  p = argparse.ArgumentParser(prog="jaxtok bench nar")
  p.add_argument("--size", type=int, default=16)
  p.add_argument("--batch", default="1,64")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--json", default="")
  args = p.parse_args(argv)
  cfg = dataclasses.replace(cpu(), speed_repeats=args.repeats)
  rows = speed_table(cfg, (args.size,), tuple(int(b) for b in args.batch.split(",")))
  print(f"nar bench: backend {jax.default_backend()}, d_model {cfg.d_model}, "
        f"{cfg.n_layers} layers, CFG {cfg.cfg_scale}", file=sys.stderr)
  print(_speed_markdown(rows))
  if args.json:
    Path(args.json).write_text(json.dumps(rows, indent=2))
  return 0
