"""The shared experiment runner: parse config, call the library, write the run directory.

``runs/<exp>/<preset>/`` gets ``config.json``, ``metrics.jsonl`` (written by the trainer),
``results.json`` (claims beside our numbers, DESIGN.md decision 10) and PNG figures.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import time
from pathlib import Path
from typing import Any

from jaxtok import config as config_lib
from jaxtok import runtime
from jaxtok_experiments import EXPERIMENTS


@dataclasses.dataclass(frozen=True)
class Claim:
  id: str
  paper: str
  statement: str
  paper_value: Any
  ours: Any
  criterion: str
  passed: bool


def load(name: str):
  if name not in EXPERIMENTS:
    raise ValueError(f"unknown experiment {name!r}; registered: {sorted(EXPERIMENTS)}")
  return importlib.import_module(EXPERIMENTS[name])


def make_config(name: str, preset: str, overrides: list[str] | tuple[str, ...] = ()):
  module = load(name)
  if preset not in module.PRESETS:
    raise ValueError(f"--preset: experiment {name!r} has presets {sorted(module.PRESETS)}, "
                     f"got {preset!r}")
  return config_lib.apply_overrides(module.PRESETS[preset](), list(overrides))


def run_experiment(name: str, preset: str = "cpu", overrides: list[str] | tuple[str, ...] = (),
                   out_root: str | Path = "runs", resume: bool = False) -> dict:
  module = load(name)
  cfg = make_config(name, preset, overrides)
  out_dir = Path(out_root) / name / preset
  out_dir.mkdir(parents=True, exist_ok=True)
  main = runtime.is_main_process()  # every process computes the same results; one writes them
  if main:
    (out_dir / "config.json").write_text(json.dumps(config_lib.to_dict(cfg), indent=2))
  start = time.time()
  claims = module.run(cfg, out_dir, resume=resume)
  results = {"experiment": name, "preset": preset, "seconds": round(time.time() - start, 1),
             "claims": [dataclasses.asdict(c) for c in claims]}
  if main:
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, default=float))
  return results


def _fmt(x: Any) -> str:
  if isinstance(x, float):
    return f"{x:.4g}"
  return str(x)


def write_report(results: list[dict], out_root: str | Path) -> Path:
  """One markdown table of every claim, then each experiment's figures."""
  out_root = Path(out_root)
  lines = ["# jaxtok reproduction report", "",
           "| experiment | claim | paper | statement | paper value | ours | criterion | passed |",
           "|---|---|---|---|---|---|---|---|"]
  for r in results:
    for c in r["claims"]:
      lines.append(f"| {r['experiment']} | {c['id']} | {c['paper']} | {c['statement']} | "
                   f"{_fmt(c['paper_value'])} | {_fmt(c['ours'])} | {c['criterion']} | "
                   f"{'yes' if c['passed'] else '**no**'} |")
  lines.append("")
  for r in results:
    run_dir = out_root / r["experiment"] / r["preset"]
    figures = sorted(run_dir.glob("*.png"))
    if figures:
      lines.append(f"## {r['experiment']} ({r['preset']}, {r['seconds']} s)")
      lines += [f"![{f.stem}]({f.relative_to(out_root)})" for f in figures]
      lines.append("")
  path = out_root / "report.md"
  path.write_text("\n".join(lines))
  return path


def reproduce(preset: str = "cpu", out_root: str | Path = "runs",
              only: list[str] | None = None) -> Path:
  names = only or list(EXPERIMENTS)
  results = [run_experiment(n, preset, (), out_root) for n in names]
  return write_report(results, out_root)
