"""Experiment ``lm``: a small byte-level LM on the Python standard library's sources.

Reports validation bits per byte beside honest count-based baselines on the same split: the
byte-unigram cross-entropy and an add-0.1 bigram model.
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from jaxtok.config import require, to_dict
from jaxtok.data import ngram, stdlib
from jaxtok.data.pipeline import check_token_range, fixed_batches
from jaxtok.data.sources import TokenWindows
from jaxtok.nn.config import ModelConfig
from jaxtok.sharding import MeshConfig
from jaxtok.train.config import TrainConfig
from jaxtok.train.loop import train
from jaxtok_experiments import plots
from jaxtok_experiments.runner import Claim


@dataclasses.dataclass(frozen=True, kw_only=True)
class DataConfig:
  seq_len: int = 256
  batch_size: int = 16
  val_fraction: float = 0.05
  max_train_bytes: int = 0  # 0: the whole split
  max_val_bytes: int = 200_000
  val_batches: int = 8

  def __post_init__(self):
    for name in ("seq_len", "batch_size", "val_batches"):
      require(getattr(self, name) > 0, f"data.{name}", "a positive integer", getattr(self, name))
    require(0 < self.val_fraction < 1, "data.val_fraction", "in (0, 1)", self.val_fraction)
    require(self.max_train_bytes >= 0 and self.max_val_bytes >= 0, "data.max_*_bytes", ">= 0",
            (self.max_train_bytes, self.max_val_bytes))


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
  model: ModelConfig
  data: DataConfig
  train: TrainConfig
  mesh: MeshConfig = MeshConfig()


def smoke() -> Config:
  return Config(
      model=ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, d_ff=192, max_len=128),
      data=DataConfig(seq_len=64, batch_size=8, max_train_bytes=2_000_000, max_val_bytes=50_000,
                      val_batches=2),
      train=TrainConfig(steps=40, lr=3e-3, warmup_steps=5, eval_every=20, log_every=5))


def cpu() -> Config:
  return Config(
      model=ModelConfig(vocab_size=256, d_model=256, n_layers=4, n_heads=4, d_ff=768,
                        max_len=256),
      data=DataConfig(seq_len=256, batch_size=16),
      train=TrainConfig(steps=600, lr=2e-3, warmup_steps=50, eval_every=100, log_every=10))


def pod() -> Config:
  return Config(
      model=ModelConfig(vocab_size=256, d_model=1024, n_layers=16, n_heads=16, d_ff=2816,
                        max_len=1024, dtype="bfloat16"),
      # 64 x 1024 tokens per step fits v5e:4x4 (16 GiB HBM/chip); `jaxtok aot` checks it.
      data=DataConfig(seq_len=1024, batch_size=64, val_batches=16),
      train=TrainConfig(steps=20_000, lr=1e-3, warmup_steps=1000, eval_every=1000,
                        ckpt_every=1000, progress=False),
      mesh=MeshConfig(data=-1, fsdp=4, tensor=1))


PRESETS = {"smoke": smoke, "cpu": cpu, "pod": pod}


def run(cfg: Config, out_dir: Path, resume: bool = False) -> list[Claim]:
  require(cfg.model.vocab_size == 256, "model.vocab_size", "256 (byte-level corpus)",
          cfg.model.vocab_size)
  train_tokens = stdlib.byte_tokens("train", cfg.data.val_fraction, cfg.data.max_train_bytes)
  val_tokens = stdlib.byte_tokens("val", cfg.data.val_fraction, cfg.data.max_val_bytes)
  check_token_range(train_tokens, cfg.model.vocab_size, "train corpus")
  val_batches = fixed_batches(TokenWindows(val_tokens, cfg.data.seq_len), cfg.data.batch_size,
                              cfg.data.val_batches)
  out = train(cfg.model, cfg.train, cfg.mesh, train_source=TokenWindows(train_tokens,
              cfg.data.seq_len), val_batches=val_batches, batch_size=cfg.data.batch_size,
              out_dir=out_dir, config_dict=to_dict(cfg), resume=resume)

  # Baselines on exactly the validation bytes the model is scored on.
  scored = np.concatenate([b["targets"].reshape(-1) for b in val_batches])
  unigram = ngram.unigram_bits(train_tokens, scored, 256)
  prev = np.concatenate([b["inputs"].reshape(-1) for b in val_batches])
  bigram = ngram.bigram_bits(train_tokens, prev, scored, 256)
  model_bpb = out["final"]["loss"] / math.log(2)
  summary = {"val_bits_per_byte": model_bpb, "unigram_bits_per_byte": unigram,
             "bigram_bits_per_byte": bigram, "train_tokens_per_s": out["tokens_per_s"],
             "val_loss_per_position": out["final"]["loss_per_position"]}
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
  plots.loss_curve(out["history"], out["evals"], out_dir / "loss_curve.png",
                   baselines={"byte unigram": unigram * math.log(2),
                              "byte bigram": bigram * math.log(2)})
  plots.per_position(out["final"]["loss_per_position"], out_dir / "loss_per_position.png")
  return [
      Claim("lm-beats-unigram", "baseline", "a trained byte LM beats the byte-unigram "
            "cross-entropy on held-out stdlib code (bits/byte)", round(unigram, 3),
            round(model_bpb, 3), "ours < paper_value", model_bpb < unigram),
      Claim("lm-beats-bigram", "baseline", "a trained byte LM beats an add-0.1 byte-bigram "
            "model on held-out stdlib code (bits/byte)", round(bigram, 3), round(model_bpb, 3),
            "ours < paper_value", model_bpb < bigram),
  ]
