"""Experiment ``lm``: a small LM on the Python standard library's sources (bytes or BPE).

Reports validation bits per byte beside honest count-based baselines on the same tokens: the
unigram cross-entropy and an add-0.1 bigram model (over bytes, or over BPE tokens converted
with the split's bytes per token).
"""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Literal

import numpy as np

from jaxtok.config import require, to_dict
from jaxtok.data import ngram, stdlib
from jaxtok.data.pipeline import check_token_range, fixed_batches
from jaxtok.data.sources import TokenWindows
from jaxtok.nn.config import ModelConfig
from jaxtok.sharding import MeshConfig
from jaxtok.train.config import TrainConfig
from jaxtok.tokenize import corpus_bpe
from jaxtok.train.loop import train, transformer_factory
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
  tokenizer: Literal["bytes", "bpe"] = "bytes"  # bpe: model.vocab_size is the BPE vocabulary

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
      # ~5000 tokens/s on 2 idle cores (`jaxtok bench train`): 420 x 4096 tokens take ~6 minutes.
      train=TrainConfig(steps=420, lr=2e-3, warmup_steps=30, eval_every=60, log_every=10))


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


def _corpus(cfg: Config, split: str, max_bytes: int) -> tuple[np.ndarray, float]:
  """(tokens, bytes per token) of a split."""
  if cfg.data.tokenizer == "bytes":
    require(cfg.model.vocab_size == 256, "model.vocab_size", "256 for data.tokenizer=bytes",
            cfg.model.vocab_size)
    return stdlib.byte_tokens(split, cfg.data.val_fraction, max_bytes), 1.0
  tokens, n_bytes = corpus_bpe.tokens(split, cfg.model.vocab_size, cfg.data.val_fraction,
                                      max_bytes)
  return tokens, n_bytes / len(tokens)


def run(cfg: Config, out_dir: Path, resume: bool = False) -> list[Claim]:
  train_tokens, _ = _corpus(cfg, "train", cfg.data.max_train_bytes)
  val_tokens, bytes_per_token = _corpus(cfg, "val", cfg.data.max_val_bytes)
  vocab = cfg.model.vocab_size
  check_token_range(train_tokens, vocab, "train corpus")
  check_token_range(val_tokens, vocab, "validation corpus")
  val_batches = fixed_batches(TokenWindows(val_tokens, cfg.data.seq_len), cfg.data.batch_size,
                              cfg.data.val_batches)
  out = train(transformer_factory(cfg.model), cfg.train, cfg.mesh,
              train_source=TokenWindows(train_tokens,
              cfg.data.seq_len), val_batches=val_batches, batch_size=cfg.data.batch_size,
              out_dir=out_dir, config_dict=to_dict(cfg), resume=resume)

  # Baselines on exactly the validation tokens the model is scored on.
  scored = np.concatenate([b["targets"].reshape(-1) for b in val_batches])
  prev = np.concatenate([b["inputs"].reshape(-1) for b in val_batches])
  per_byte = 1.0 / bytes_per_token
  unigram = ngram.unigram_bits(train_tokens, scored, vocab) * per_byte
  bigram = ngram.bigram_bits(train_tokens, prev, scored, vocab) * per_byte
  model_bpb = out["final"]["loss"] / math.log(2) * per_byte
  unit = "byte" if cfg.data.tokenizer == "bytes" else "BPE-token"
  summary = {"val_bits_per_byte": model_bpb, "unigram_bits_per_byte": unigram,
             "bigram_bits_per_byte": bigram, "bytes_per_token": bytes_per_token,
             "train_tokens_per_s": out["tokens_per_s"],
             "val_loss_per_position": out["final"]["loss_per_position"]}
  (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
  nats_per_token = math.log(2) * bytes_per_token
  plots.loss_curve(out["history"], out["evals"], out_dir / "loss_curve.png",
                   baselines={f"{unit} unigram": unigram * nats_per_token,
                              f"{unit} bigram": bigram * nats_per_token})
  plots.per_position(out["final"]["loss_per_position"], out_dir / "loss_per_position.png")
  return [
      Claim("lm-beats-unigram", "baseline", f"a trained {unit} LM beats the {unit}-unigram "
            "cross-entropy on held-out stdlib code (bits/byte)", round(unigram, 3),
            round(model_bpb, 3), "ours < paper_value", model_bpb < unigram),
      Claim("lm-beats-bigram", "baseline", f"a trained {unit} LM beats an add-0.1 {unit}-bigram "
            "model on held-out stdlib code (bits/byte)", round(bigram, 3), round(model_bpb, 3),
            "ours < paper_value", model_bpb < bigram),
  ]
