"""Experiment ``permutation``: arXiv 2509.24125 (Alur, Hays, Raghavan, Shah).

Inverse permutation learning: given P and Y_P = P Y, output Y = P^T Y_P.
(a) The paper's vector model (disentangled attention-only, 2 layers, zero init) trained with
    the sum-of-squares loss in three variants: causal (answers read at the Y_P block), unmasked,
    and causal with n content-free scratch rows (answers read at the scratch rows); the hand
    construction at large inverse temperature. Test errors are set beside the exact causal
    bound 0.25 n(n-1)/2 (jaxtok.permutation). Every variant trains through
    ``jaxtok.train.loop.train`` (the vector model through its model seam), with checkpoints
    and resume, in its own directory ``vector/<variant>`` or ``tokens/<variant>``.
(b) The same task as tokens on jaxtok's standard transformer (RoPE, SwiGLU, RMSNorm), trained by
    the default next-token loss (``permutation.token_loss`` also reports the answer scores)
    through the one train loop with the mask in the batch: causal,
    prefix (bidirectional over the input) and causal + m scratch tokens for m in {n/2, n, 2n}
    (m = 0 is the causal variant); per answer token error and whole-answer exact match beside
    each variant's exact causal bound.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Literal

import jax
import numpy as np

from jaxtok import permutation as pm
from jaxtok.config import require, to_dict
from jaxtok.data.pipeline import fixed_batches
from jaxtok.decode import Model
from jaxtok.nn.config import ModelConfig
from jaxtok.permutation import VectorConfig as VectorModelConfig
from jaxtok.permutation import hand_construction, vector_factory, vector_loss
from jaxtok.sharding import MeshConfig
from jaxtok.train.config import TrainConfig
from jaxtok.train.loop import train, transformer_factory
from jaxtok_experiments.runner import Claim

PAPER = "arXiv 2509.24125"


@dataclasses.dataclass(frozen=True, kw_only=True)
class VectorConfig:
  n: int = 6
  n_layers: int = 2
  n_heads: int = 1
  steps: int = 1000
  batch_size: int = 256
  lr: float = 1e-2  # Adam (core_papers.md T3); the paper's code uses SGD lr=1 with clipping
  clip_norm: float = 10.0
  eval_every: int = 250
  test_size: int = 2048
  beta: float = 60.0  # inverse temperature of the hand construction

  def __post_init__(self):
    require(self.n >= 2, "vector.n", "an integer >= 2", self.n)
    for name in ("steps", "batch_size", "eval_every", "test_size", "n_layers", "n_heads"):
      require(getattr(self, name) > 0, f"vector.{name}", "a positive integer",
              getattr(self, name))


@dataclasses.dataclass(frozen=True, kw_only=True)
class TokenConfig:
  n: int = 6
  k: int = 4  # alphabet of the string
  scratch: tuple[float, ...] = (0.5, 1.0, 2.0)  # scratch tokens as multiples of n
  d_model: int = 64
  n_layers: int = 2
  n_heads: int = 4
  d_ff: int = 128
  positions: Literal["rope", "learned"] = "rope"
  # The all-scratch read rows sit on a plateau (predict the string's mode) for >= 1000-1500
  # steps before the two-hop circuit forms; when they leave it varies from run to run (a
  # 5000 x 128 run of m = n reached 0 error, this budget does not). Reported, not tuned.
  steps: int = 1500
  batch_size: int = 128
  lr: float = 3e-3
  eval_every: int = 250
  test_size: int = 1024

  def __post_init__(self):
    require(self.n >= 2, "tokens.n", "an integer >= 2", self.n)
    require(self.k >= 2, "tokens.k", "an alphabet of >= 2 symbols", self.k)
    require(all(s > 0 for s in self.scratch), "tokens.scratch", "positive multiples of n",
            self.scratch)
    require(self.positions in ("rope", "learned"), "tokens.positions", "rope | learned",
            self.positions)
    for name in ("steps", "batch_size", "eval_every", "test_size", "d_model", "n_layers"):
      require(getattr(self, name) > 0, f"tokens.{name}", "a positive integer",
              getattr(self, name))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  vector: VectorConfig = VectorConfig()
  tokens: TokenConfig = TokenConfig()
  seed: int = 0


def smoke() -> Config:
  return Config(vector=VectorConfig(n=4, steps=20, batch_size=64, eval_every=10, test_size=256),
                tokens=TokenConfig(n=4, scratch=(1.0,), d_model=32, d_ff=64, n_heads=2, steps=20,
                                   batch_size=32, eval_every=10, test_size=128))


def cpu() -> Config:
  # n = 6 (the notes' T3): 3 vector runs x 1000 steps and 5 token runs x 1500 steps of 128.
  return Config()


def pod() -> Config:
  # The paper's scale: n = 10, long runs, a wider token model.
  return Config(vector=VectorConfig(n=10, steps=2**15, batch_size=1024, eval_every=2048,
                                    test_size=8192),
                tokens=TokenConfig(n=10, k=10, d_model=256, n_layers=4, n_heads=8, d_ff=1024,
                                   steps=20_000, batch_size=512, lr=1e-3, eval_every=2000,
                                   test_size=8192))


PRESETS = {"smoke": smoke, "cpu": cpu, "pod": pod}

VECTOR_VARIANTS = {"causal": ("causal", 0), "unmasked": ("unmasked", 0), "scratch": ("scratch", 1)}


def _curve(evals: list[dict]) -> list[dict]:
  """The trainer's evaluations as {step, <metric>: value} (the loss's own metrics)."""
  return [{"step": e["step"], **{k[4:]: v for k, v in e.items() if k.startswith("val_")
                                 and k != "val_loss"}} for e in evals]


def _fit(factory, loss_fn, tcfg: TrainConfig, source, example_fn, test: dict, batch_size: int,
         out_dir: Path, config_dict: dict, resume: bool) -> dict:
  """One variant through the one train loop (checkpoints, resume); returns its eval curve and
  the trained ``Model``."""
  start = time.time()
  out = train(factory, tcfg, MeshConfig(), train_source=source, val_batches=[test],
              batch_size=batch_size, out_dir=out_dir, config_dict=config_dict, resume=resume,
              loss_fn=loss_fn, example_fn=example_fn)
  curve = _curve(out["evals"])
  return {"curve": curve, "final": curve[-1], "model": out["model"],
          "seconds": round(time.time() - start, 1)}


def _drop_perm(example: dict) -> dict:
  return {k: v for k, v in example.items() if k != "perm"}


@jax.jit
def _vector_metrics(model: Model, batch: dict) -> dict:
  return vector_loss(model.graphdef, model.params, batch, None)[1].metrics


def run_vector(cfg: VectorConfig, seed: int, out_dir: Path, resume: bool = False,
               config_dict: dict | None = None) -> dict:
  n = cfg.n
  out = {"bound": pm.causal_mse_lower_bound(n), "variants": {}, "hand": {}}
  for v_id, (name, (mask_kind, m_mult)) in enumerate(VECTOR_VARIANTS.items()):
    m = m_mult * n
    t = pm.seq_len(n, m)
    test = _drop_perm(fixed_batches(pm.PermutationSource(n, seed + 1, n_scratch=m,
                                                         variant=mask_kind),
                                    cfg.test_size, 1, example_fn=lambda e: e)[0])
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=min(50, cfg.steps // 10),
                       weight_decay=0.0, clip_norm=cfg.clip_norm, seed=seed,
                       eval_every=cfg.eval_every, log_every=10, progress=False)
    factory = vector_factory(VectorModelConfig(n, t, n_layers=cfg.n_layers, n_heads=cfg.n_heads))
    res = _fit(factory, vector_loss, tcfg,
               pm.PermutationSource(n, seed + 2 + v_id, n_scratch=m, variant=mask_kind),
               _drop_perm, test, cfg.batch_size, out_dir / name,
               {**(config_dict or {}), "part": "vector", "variant": name}, resume)
    res.pop("model")
    out["variants"][name] = {**res, "n_scratch": m,
                             "bound": pm.causal_mse_lower_bound(n, n_scratch=m)
                             if mask_kind != "unmasked" else 0.0}
    hand = Model.from_module(hand_construction(n, m, cfg.beta))
    out["hand"][name] = {k: float(v) for k, v in _vector_metrics(hand, test).items()}
  return out


def run_tokens(cfg: TokenConfig, seed: int, out_dir: Path, resume: bool = False,
               config_dict: dict | None = None, only: tuple[str, ...] | None = None) -> dict:
  """Trains every token variant (or those named in ``only``)."""
  n, k = cfg.n, cfg.k
  voc = pm.token_vocab(n, k)
  counts = [0] + sorted({max(1, round(s * n)) for s in cfg.scratch})
  variants = {"causal": ("causal", 0), "prefix": ("prefix", 0),
              **{f"scratch{m}": ("scratch", m) for m in counts[1:]}}
  out = {"variants": {}, "scratch_counts": counts}
  for v_id, (name, (mask_kind, m)) in enumerate(variants.items()):
    if only is not None and name not in only:
      continue
    t = pm.seq_len(n, m)
    mcfg = ModelConfig(vocab_size=voc["size"], d_model=cfg.d_model, n_layers=cfg.n_layers,
                       n_heads=cfg.n_heads, d_ff=cfg.d_ff, max_len=max(t, 8),
                       positions=cfg.positions)
    mask_TxT = pm.mask_for(mask_kind, n, m, 1)[0]
    test = {**_drop_perm(pm.token_batch(np.random.default_rng([seed + 1, m]), cfg.test_size, n,
                                        k, n_scratch=m)),
            "mask": pm.mask_for(mask_kind, n, m, cfg.test_size)}
    tcfg = TrainConfig(steps=cfg.steps, lr=cfg.lr, warmup_steps=min(50, cfg.steps // 10),
                       weight_decay=0.0, seed=seed, eval_every=cfg.eval_every, log_every=10,
                       progress=False)
    res = _fit(transformer_factory(mcfg), pm.token_loss, tcfg,
               pm.PermutationSource(n, seed + 100 + v_id, kind="tokens", n_scratch=m, k=k,
                                    variant=mask_kind),
               lambda e, mask_TxT=mask_TxT: {**_drop_perm(e), "mask": mask_TxT}, test,
               cfg.batch_size, out_dir / name,
               {**(config_dict or {}), "part": "tokens", "variant": name}, resume)
    res.pop("model")
    bound = pm.causal_token_bounds(n, k, 0 if mask_kind == "prefix" else m)
    if mask_kind == "prefix":
      bound = {"accuracy": 1.0, "cross_entropy": 0.0, "exact_match": 1.0,
               "unrecoverable_fraction": 0.0}
    out["variants"][name] = {**res, "n_scratch": m, "mask": mask_kind, "bound": bound}
  out["causal_bound"] = pm.causal_token_bounds(n, k, 0)
  return out


def _plot(vec: dict, tok: dict, out_dir: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, axes = plt.subplots(1, 3, figsize=(15, 4))
  ax = axes[0]
  for name, v in vec["variants"].items():
    ax.plot([c["step"] for c in v["curve"]], [c["sse"] for c in v["curve"]], "o-", label=name)
  ax.axhline(vec["bound"], ls="--", color="gray", label="exact causal bound")
  ax.set(xlabel="step", ylabel="test squared error / example", yscale="log",
         title="vector model (paper)")
  ax.legend(fontsize=8)
  ax = axes[1]
  for name, v in tok["variants"].items():
    ax.plot([c["step"] for c in v["curve"]], [1 - c["accuracy"] for c in v["curve"]], "o-",
            label=name)
  ax.axhline(1 - tok["causal_bound"]["accuracy"], ls="--", color="gray",
             label="causal bound (m=0)")
  ax.set(xlabel="step", ylabel="test answer-token error", title="token transformer")
  ax.legend(fontsize=8)
  ax = axes[2]
  sweep = [v for v in tok["variants"].values() if v["mask"] != "prefix"]
  ms = [v["n_scratch"] for v in sweep]
  ax.plot(ms, [1 - v["final"]["accuracy"] for v in sweep], "o-", label="trained (causal)")
  ax.plot(ms, [1 - v["bound"]["accuracy"] for v in sweep], "s--", color="gray",
          label="exact causal bound")
  ax.set(xlabel="scratch tokens m", ylabel="final answer-token error",
         title="scratch-token sweep")
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(out_dir / "permutation_curves.png", dpi=100)
  plt.close(fig)


def run(cfg: Config, out_dir: Path, resume: bool = False) -> list[Claim]:
  out_dir = Path(out_dir)
  config_dict = {"experiment": to_dict(cfg)}
  vec = run_vector(cfg.vector, cfg.seed, out_dir / "vector", resume, config_dict)
  tok = run_tokens(cfg.tokens, cfg.seed, out_dir / "tokens", resume, config_dict)
  (out_dir / "summary.json").write_text(json.dumps({"vector": vec, "tokens": tok,
                                                    "config": to_dict(cfg)}, indent=2,
                                                   default=float))
  with (out_dir / "metrics.jsonl").open("w") as f:
    for part, res in (("vector", vec), ("tokens", tok)):
      for name, v in res["variants"].items():
        for c in v["curve"]:
          f.write(json.dumps({"part": part, "variant": name, **c}) + "\n")
  _plot(vec, tok, out_dir)
  return claims(cfg, vec, tok)


def claims(cfg: Config, vec: dict, tok: dict) -> list[Claim]:
  n, b = cfg.vector.n, vec["bound"]
  fin = {k: v["final"]["sse"] for k, v in vec["variants"].items()}
  out = [
      Claim("vector-causal-at-bound", PAPER, f"a causal model reading at the Y_P block cannot "
            f"beat the exact bound 0.25 n(n-1)/2 (n={n}); test squared error / example",
            round(b, 4), round(fin["causal"], 4), "ours >= 0.95 * paper_value",
            fin["causal"] >= 0.95 * b, reference="Thm 1 + our exact bound"),
      Claim("vector-unmasked-inverts", PAPER, "without the causal mask the 2-layer model "
            "learns to invert (test squared error / example)", round(0.2 * b, 4),
            round(fin["unmasked"], 4), "ours <= 0.2 * bound", fin["unmasked"] <= 0.2 * b),
      Claim("vector-scratch-inverts", PAPER, f"causal + n={n} zero scratch rows learns to "
            "invert (test squared error / example)", round(0.2 * b, 4),
            round(fin["scratch"], 4), "ours <= 0.2 * bound", fin["scratch"] <= 0.2 * b),
  ]
  for name in ("unmasked", "scratch"):
    e = vec["hand"][name]["sse"]
    out.append(Claim(f"hand-construction-{name}", PAPER, f"the hand-built 2-layer inverter "
                     f"({name}, beta={cfg.vector.beta}) has test squared error < 1e-4",
                     1e-4, e, "ours < 1e-4", e < 1e-4))
  e = vec["hand"]["causal"]["sse"]
  out.append(Claim("hand-construction-causal-at-bound", PAPER, "the same parameters under the "
                   "causal mask stay above the exact bound", round(b, 4), round(e, 4),
                   "ours >= paper_value", e >= b))
  tv = tok["variants"]
  err_bound = 1 - tok["causal_bound"]["accuracy"]
  err = {k: 1 - v["final"]["accuracy"] for k, v in tv.items()}
  nt = cfg.tokens.n
  out.append(Claim("tokens-causal-at-bound", PAPER, f"jaxtok's causal transformer cannot beat "
                   f"the exact causal bound on answer-token error (n={nt}, k={cfg.tokens.k})",
                   round(err_bound, 4), round(err["causal"], 4), "ours >= 0.95 * paper_value",
                   err["causal"] >= 0.95 * err_bound))
  out.append(Claim("tokens-prefix-inverts", PAPER, "a prefix mask (bidirectional over the "
                   "input) lets the same transformer invert: answer-token error",
                   round(0.2 * err_bound, 4), round(err["prefix"], 4), "ours <= 0.2 * causal bound",
                   err["prefix"] <= 0.2 * err_bound))
  for name, v in tv.items():
    if v["mask"] != "scratch":
      continue
    m, vb = v["n_scratch"], 1 - v["bound"]["accuracy"]
    if m >= nt:
      out.append(Claim(f"tokens-{name}-inverts", PAPER, f"causal + {m} content-free scratch "
                       "tokens inverts: answer-token error", round(0.2 * err_bound, 4),
                       round(err[name], 4), "ours <= 0.2 * causal bound",
                       err[name] <= 0.2 * err_bound))
    else:
      out.append(Claim(f"tokens-{name}-at-bound", PAPER, f"with {m} < n scratch tokens the "
                       "causal bound (recomputed for m) still holds: answer-token error",
                       round(vb, 4), round(err[name], 4), "ours >= 0.95 * paper_value",
                       err[name] >= 0.95 * vb, reference="our exact bound for m scratch"))
  return out
