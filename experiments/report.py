"""``runs/report.md``: every claim with its reference and units, then each run's context.

A researcher citing a number needs to know where the compared value comes from (a paper's table,
or a baseline we computed), its unit, and what produced ours: model size, steps, tokens,
seconds, the commit, the date and the hardware (issue 15).
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any


@functools.cache
def commit() -> str:
  """The source tree's commit, ``+dirty`` when tracked files differ from it."""
  root = Path(__file__).resolve().parent
  try:
    rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain",
                            "--untracked-files=no"], capture_output=True, text=True,
                           timeout=10).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return "unknown (not a git checkout)"
  return rev + ("+dirty" if dirty else "")


@functools.cache
def hardware() -> str:
  import jax
  devices = jax.devices()
  cpu = ""
  try:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
      if line.startswith("model name"):
        cpu = line.split(":", 1)[1].strip()
        break
  except OSError:
    pass
  kind = devices[0].device_kind
  return (f"{len(devices)}x {kind} ({devices[0].platform}); host {os.cpu_count()} CPU cores"
          f"{f' ({cpu})' if cpu else ''}")


def run_context(out_dir: Path, seconds: float, resumed: bool = False) -> dict:
  """What produced a run's numbers; the trainer's ``train.json`` files give size and tokens."""
  trainings = []
  for f in sorted(Path(out_dir).rglob("train.json")):
    try:
      info = json.loads(f.read_text())
    except (OSError, ValueError):
      continue
    rel = f.parent.relative_to(out_dir).as_posix()
    trainings.append({"name": "" if rel == "." else rel, **info})
  return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "commit": commit(), "hardware": hardware(), "seconds": seconds, "resumed": resumed,
          "trainings": trainings}


def _fmt(x: Any) -> str:
  if isinstance(x, float):
    return f"{x:.4g}"
  return "—" if x is None or x == "" else str(x)


def _count(n: float) -> str:
  for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
    if n >= size:
      return f"{n / size:.3g}{unit}"
  return str(int(n))


def reference(claim: dict) -> str:
  """Where the compared value comes from, in words."""
  if claim.get("reference"):
    return claim["reference"]
  paper = str(claim.get("paper", ""))
  if paper.lower() in ("", "baseline", "ours"):
    return "our baseline"
  return f"{paper} (see criterion)"


def unit(claim: dict) -> str:
  """The claim's unit, else one its statement ends with in parentheses ("... (bits/byte)")."""
  if claim.get("unit"):
    return claim["unit"]
  m = re.search(r"\(([^()]*/[^()]*)\)\s*$", str(claim.get("statement", "")))
  return m.group(1) if m else "—"


def _context_cells(r: dict) -> list[str]:
  ctx = r.get("context") or {}
  tr = ctx.get("trainings") or []
  join = lambda key, f: ", ".join(  # noqa: E731
      (f"{t['name']}: " if t["name"] and len(tr) > 1 else "") + f(t[key]) for t in tr
      if t.get(key) is not None) or "—"
  return [join("params", _count), join("steps", str), join("tokens", _count),
          _fmt(r.get("seconds")), str(ctx.get("date", "—")), str(ctx.get("commit", "—")),
          str(ctx.get("hardware", "—"))]


def write_report(results: list[dict], out_root: str | Path) -> Path:
  """One markdown table of every claim, the runs' context, then each experiment's figures."""
  out_root = Path(out_root)
  lines = ["# jaxtok reproduction report", "",
           "Each claim's reference value comes from the paper named in *reference* (with its "
           "arXiv id and table) or, where it says *our baseline*, from a baseline computed here "
           "on the same data. Figures use the units their axes name.", "",
           "| experiment | claim | statement | reference | reference value | ours | unit | "
           "criterion | passed |",
           "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    if r.get("error"):
      lines.append(f"| {r['experiment']} | — | the run failed: {r['error']} | — | — | — | — | "
                   "— | **no** |")
    for c in r["claims"]:
      lines.append(f"| {r['experiment']} | {c['id']} | {c['statement']} | {reference(c)} | "
                   f"{_fmt(c['paper_value'])} | {_fmt(c['ours'])} | {unit(c)} | "
                   f"{c['criterion'].replace('paper_value', 'reference')} | "
                   f"{'yes' if c['passed'] else '**no**'} |")
  lines += ["", "## Runs", "",
            "| experiment | preset | parameters | steps | tokens | seconds | date (UTC) | commit "
            "| hardware |", "|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    lines.append(f"| {r['experiment']} | {r['preset']} | " + " | ".join(_context_cells(r)) + " |")
  lines.append("")
  for r in results:
    run_dir = out_root / r["experiment"] / r["preset"]
    figures = sorted(run_dir.glob("*.png"))
    if figures:
      lines.append(f"## {r['experiment']} ({r['preset']}, {r['seconds']} s)")
      lines += [f"![{f.stem}]({f.relative_to(out_root)})" for f in figures]
      lines.append("")
  path = out_root / "report.md"
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name("report.md.tmp")
  tmp.write_text("\n".join(lines))
  os.replace(tmp, path)
  return path
