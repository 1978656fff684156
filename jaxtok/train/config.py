"""Training hyper-parameters (AdamW, warm-up + cosine, clipping, cadence of logs/evals/ckpts)."""
from __future__ import annotations

import dataclasses

from jaxtok.config import require


@dataclasses.dataclass(frozen=True, kw_only=True)
class TrainConfig:
  steps: int = 1000
  lr: float = 3e-3
  warmup_steps: int = 50
  min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
  weight_decay: float = 0.1
  b1: float = 0.9
  b2: float = 0.95
  clip_norm: float = 1.0
  seed: int = 0
  log_every: int = 10
  eval_every: int = 100
  eval_batches: int = 8
  # Checkpoints: every ckpt_every steps, or with ckpt_every=0 once ckpt_minutes of training have
  # passed since the last one; always at the end and on SIGTERM (jaxtok.train.loop).
  ckpt_every: int = 0
  ckpt_minutes: float = 5.0
  progress: bool = True  # tqdm bar

  def __post_init__(self):
    require(self.steps > 0, "train.steps", "a positive integer", self.steps)
    require(self.lr > 0, "train.lr", "> 0", self.lr)
    require(0 <= self.warmup_steps <= self.steps, "train.warmup_steps",
            f"in [0, train.steps={self.steps}]", self.warmup_steps)
    require(0 <= self.min_lr_ratio <= 1, "train.min_lr_ratio", "in [0, 1]", self.min_lr_ratio)
    require(self.weight_decay >= 0, "train.weight_decay", ">= 0", self.weight_decay)
    require(0 <= self.b1 < 1 and 0 <= self.b2 < 1, "train.b1/b2", "in [0, 1)", (self.b1, self.b2))
    require(self.clip_norm > 0, "train.clip_norm", "> 0", self.clip_norm)
    for name in ("log_every", "eval_every", "eval_batches"):
      require(getattr(self, name) > 0, f"train.{name}", "a positive integer", getattr(self, name))
    require(self.ckpt_every >= 0, "train.ckpt_every", ">= 0 (0: every train.ckpt_minutes)",
            self.ckpt_every)
    require(self.ckpt_minutes > 0, "train.ckpt_minutes", "> 0", self.ckpt_minutes)
