"""Pretrained-model evaluation: SmolLM2-135M-Instruct bits per byte on held-out text.

Model: SmolLM2 (Allal et al., arXiv 2502.02737), loaded from its Q4_1 GGUF (jaxtok.models).
Texts: a few CPython standard-library source files (code; held out from jaxtok's own training, but
very likely present in SmolLM2's pretraining data, so read code numbers as an optimistic bound) and
jaxtok/assets/english.txt (prose written for this repo, so unseen in pretraining). Bits per byte compares across tokenizers.
The paper reports no bits-per-byte numbers for these texts, so the claims compare against
baselines computed on the same bytes: the byte-unigram entropy (fit on the text itself) and
zlib -9. A claim that fails is reported as failed.
"""
from __future__ import annotations

import dataclasses
import json
import sysconfig
import time
from importlib import resources
from pathlib import Path
from typing import Literal

from jaxtok.config import require
from jaxtok_experiments.runner import Claim

PAPER = "SmolLM2 (arXiv 2502.02737)"


@dataclasses.dataclass(frozen=True, kw_only=True)
class LMEvalConfig:
  model: str = "smollm2-135m"
  dtype: Literal["float32", "bfloat16"] = "float32"
  window: int = 512  # tokens per forward pass (context resets at each window)
  batch: int = 4
  code_files: tuple[str, ...] = ("bisect.py", "colorsys.py", "fnmatch.py", "textwrap.py")
  max_bytes_per_text: int = 0  # 0: whole files

  def __post_init__(self):
    require(self.window > 0, "window", "a positive integer", self.window)
    require(self.batch > 0, "batch", "a positive integer", self.batch)
    require(len(self.code_files) > 0, "code_files", "at least one stdlib file", self.code_files)
    require(self.max_bytes_per_text >= 0, "max_bytes_per_text", ">= 0", self.max_bytes_per_text)


PRESETS = {
    "smoke": lambda: LMEvalConfig(window=128, batch=2, code_files=("bisect.py",),
                                  max_bytes_per_text=1500),
    "cpu": lambda: LMEvalConfig(),
    "pod": lambda: LMEvalConfig(window=2048, batch=8, code_files=(
        "bisect.py", "colorsys.py", "fnmatch.py", "textwrap.py", "heapq.py", "shlex.py",
        "string.py", "graphlib.py", "glob.py", "stat.py")),
}


def _texts(cfg: LMEvalConfig) -> dict[str, list[str]]:
  stdlib = Path(sysconfig.get_paths()["stdlib"])
  code = []
  for name in cfg.code_files:
    path = stdlib / name
    if not path.is_file():
      raise ValueError(f"code_files: {name!r} not found in the standard library at {stdlib}")
    code.append(path.read_text(encoding="utf-8"))
  english = [resources.files("jaxtok").joinpath("assets/english.txt").read_text("utf-8")]
  if cfg.max_bytes_per_text:
    cut = lambda t: t.encode()[:cfg.max_bytes_per_text].decode("utf-8", "ignore")  # noqa: E731
    code, english = [cut(t) for t in code], [cut(t) for t in english]
  return {"english": english, "code": code}


def _figure(rows: dict, path: Path) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, ax = plt.subplots(figsize=(6, 3.2))
  names = list(rows)
  for i, (label, key) in enumerate([("model", "bits_per_byte"), ("zlib -9", "zlib_bpb"),
                                    ("byte unigram", "unigram_bpb")]):
    ax.bar([j + 0.27 * (i - 1) for j in range(len(names))], [rows[n][key] for n in names],
           width=0.27, label=label)
  ax.set_xticks(range(len(names)), names)
  ax.set_ylabel("bits per byte")
  ax.set_title("SmolLM2-135M (Q4_1 GGUF) vs baselines on the same bytes")
  ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def run(cfg: LMEvalConfig, out_dir: Path, resume: bool = False) -> list[Claim]:
  del resume  # evaluation only: nothing to resume
  from jaxtok.models import evaluate, load

  start = time.time()
  model = load(cfg.model, dtype=cfg.dtype)
  load_s = time.time() - start
  rows = {}
  for name, texts in _texts(cfg).items():
    t0 = time.time()
    score = evaluate.score_texts(model, texts, window=cfg.window, batch=cfg.batch)
    rows[name] = {"bits_per_byte": score.bits_per_byte, "token_perplexity":
                  score.token_perplexity, "bytes_per_token": score.bytes_per_token,
                  "n_tokens": score.n_tokens, "n_bytes": score.n_bytes,
                  "unigram_bpb": evaluate.unigram_bits_per_byte(texts),
                  "zlib_bpb": evaluate.zlib_bits_per_byte(texts),
                  "seconds": round(time.time() - t0, 1)}
  (out_dir / "metrics.json").write_text(json.dumps({"load_seconds": round(load_s, 1),
                                                    "texts": rows}, indent=2))
  _figure(rows, out_dir / "bits_per_byte.png")
  claims = []
  for name, r in rows.items():
    for base, label in (("unigram_bpb", "byte-unigram entropy"), ("zlib_bpb", "zlib -9")):
      claims.append(Claim(
          id=f"{name}-bpb-below-{base.split('_')[0]}", paper=PAPER,
          statement=f"{cfg.model} bits/byte on held-out {name} text is below the {label} of the "
                    "same bytes",
          paper_value=round(r[base], 4), ours=round(r["bits_per_byte"], 4),
          criterion=f"ours < paper_value ({label}, computed on the same text)",
          passed=bool(r["bits_per_byte"] < r[base])))
  return claims
