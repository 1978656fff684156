"""Shared matplotlib figures (Agg backend: experiments run headless)."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def loss_curve(history: list[dict], evals: list[dict], path: Path,
               baselines: dict[str, float] | None = None) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([h["step"] for h in history], [h["loss"] for h in history], lw=1, label="train")
  if evals:
    ax.plot([e["step"] for e in evals], [e["val_loss"] for e in evals], "o-", label="validation")
  for name, value in (baselines or {}).items():
    ax.axhline(value, ls="--", lw=1, color="gray")
    ax.annotate(name, (0, value), fontsize=8, va="bottom")
  ax.set_xlabel("step")
  ax.set_ylabel("loss (nats/token)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def per_position(loss_T: list[float], path: Path) -> None:
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(range(len(loss_T)), loss_T)
  ax.set_xlabel("position in context")
  ax.set_ylabel("validation loss (nats/token)")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
