"""The shared experiment runner: parse config, call the library, write the run directory.

``runs/<exp>/<preset>/`` gets ``config.json``, ``metrics.jsonl`` (written by the trainer),
``results.json`` (claims beside our numbers, DESIGN.md decision 10) and PNG figures.

One run per directory (issue 15): the config is validated and the directory locked before
anything is written; a directory holding another run's files is refused unless ``resume``
(continue that run: its ``config.json`` is the base, except the mesh, which is the preset's
for this machine; ``--set`` may change only run-length, cadence and mesh fields) or
``overwrite`` (its files are removed first). ``results.json`` exists only for a finished run,
so resuming a finished run says so and changes nothing.
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from jaxtok import config as config_lib
from jaxtok import rundir, runtime
from jaxtok.ckpt import CheckpointError, config_mismatch
from jaxtok_experiments import EXPERIMENTS
from jaxtok_experiments import report as report_lib


@dataclasses.dataclass(frozen=True)
class Claim:
  """One claim beside our measurement. ``reference`` says where ``paper_value`` comes from
  ("arXiv 2404.08335 Table 2", or "our baseline: ..."); ``unit`` is the values' unit."""
  id: str
  paper: str
  statement: str
  paper_value: Any
  ours: Any
  criterion: str
  passed: bool
  unit: str = ""
  reference: str = ""


def claim_dict(c: Claim) -> dict:
  # The optional fields appear only when set, so results.json keeps its documented keys.
  d = dataclasses.asdict(c)
  return {k: v for k, v in d.items() if k not in ("unit", "reference") or v}


def _note(msg: str) -> None:
  if runtime.is_main_process():
    print(msg, file=sys.stderr, flush=True)


def load(name: str):
  if name not in EXPERIMENTS:
    raise ValueError(f"unknown experiment {name!r}; registered: {sorted(EXPERIMENTS)}")
  return importlib.import_module(EXPERIMENTS[name])


def _check_cross_fields(cfg) -> None:
  """Checks between sections that no single section can make."""
  model, data = getattr(cfg, "model", None), getattr(cfg, "data", None)
  if getattr(model, "positions", None) == "learned" and hasattr(data, "seq_len"):
    config_lib.require(data.seq_len <= model.max_len, "data.seq_len",
                       f"<= model.max_len={model.max_len} with model.positions='learned' (the "
                       "position table's size; raise model.max_len)", data.seq_len)


def make_config(name: str, preset: str, overrides: list[str] | tuple[str, ...] = (),
                base: dict | None = None):
  """The preset (or ``base``, a saved ``config.json``) with ``overrides``, validated."""
  module = load(name)
  if preset not in module.PRESETS:
    raise ValueError(f"--preset: experiment {name!r} has presets {sorted(module.PRESETS)}, "
                     f"got {preset!r}")
  cfg = module.PRESETS[preset]()
  if base is not None:
    preset_cfg, cfg = cfg, config_lib.from_dict(type(cfg), base)
    if hasattr(cfg, "mesh"):  # the mesh is the machine's (a resume may change device count)
      cfg = dataclasses.replace(cfg, mesh=preset_cfg.mesh)
  cfg = config_lib.apply_overrides(cfg, list(overrides))
  _check_cross_fields(cfg)
  return cfg


def run_dir(out_root: str | Path, name: str, preset: str) -> Path:
  return Path(out_root) / name / preset


def _write_json(path: Path, obj) -> None:
  tmp = path.with_name(path.name + ".tmp")  # a kill mid-write never leaves half a file
  tmp.write_text(json.dumps(obj, indent=2, default=float))
  os.replace(tmp, path)


def _json_form(d: dict) -> dict:
  return json.loads(json.dumps(d, default=float))


def _steps(config: dict):
  train = config.get("train")
  return train.get("steps") if isinstance(train, dict) else None


def run_experiment(name: str, preset: str = "cpu", overrides: list[str] | tuple[str, ...] = (),
                   out_root: str | Path = "runs", resume: bool = False,
                   overwrite: bool = False) -> dict:
  if resume and overwrite:
    raise ValueError("--resume and --overwrite: choose one (continue the run, or replace it)")
  module = load(name)
  out_dir = run_dir(out_root, name, preset)
  config_path = out_dir / "config.json"
  saved = None
  if resume:
    if not config_path.exists():
      raise rundir.RunDirError(f"--resume: {out_dir} holds no run to resume (no config.json); "
                               "start it without --resume")
    saved = json.loads(config_path.read_text())
  cfg = make_config(name, preset, overrides, base=saved)  # validated before anything is written
  current = _json_form(config_lib.to_dict(cfg))
  if saved is not None:
    diffs = config_mismatch(saved, current)
    if diffs:
      raise CheckpointError(f"--resume {out_dir}: --set may change only run-length and cadence "
                            "fields; these differ from the run's config.json:\n  " +
                            "\n  ".join(diffs))
  main = runtime.is_main_process()  # every process computes the same results; one writes them
  with rundir.hold(out_dir):
    existing = rundir.run_files(out_dir)
    if existing and not (resume or overwrite):
      raise rundir.RunDirError(
          f"{out_dir} already holds a run ({', '.join(existing[:4])}"
          f"{', ...' if len(existing) > 4 else ''}); continue it with --resume, replace it with "
          "--overwrite, or write elsewhere with --out")
    results_path = out_dir / "results.json"
    if resume and results_path.exists() and _steps(saved) == _steps(current):
      _note(f"resume: {out_dir} already finished for this config; nothing to do "
                  f"(results in {results_path}; raise train.steps with --set to train further)")
      return json.loads(results_path.read_text())
    if overwrite and existing and main:
      rundir.clear(out_dir)
      _note(f"--overwrite: removed the previous run in {out_dir}")
    if main:
      results_path.unlink(missing_ok=True)  # present only once this config's run has finished
      _write_json(config_path, current)
    start = time.time()
    claims = module.run(cfg, out_dir, resume=resume)
    seconds = round(time.time() - start, 1)
    results = {"experiment": name, "preset": preset, "seconds": seconds,
               "claims": [claim_dict(c) for c in claims],
               "context": report_lib.run_context(out_dir, seconds, resumed=resume)}
    if main:
      _write_json(results_path, results)
  return results


write_report = report_lib.write_report


def reproduce(preset: str = "cpu", out_root: str | Path = "runs",
              only: list[str] | None = None, resume: bool = False, overwrite: bool = False,
              debug: bool = False) -> Path:
  """Runs every experiment in turn, announcing each, and rewrites ``report.md`` after each one,
  so a stopped reproduction keeps what finished (continue it with ``resume``). A failing
  experiment is reported in the table and the others still run; raises at the end if any did."""
  from jaxtok.train.loop import Preempted
  names = list(only or EXPERIMENTS)
  for n in names:
    load(n)
  busy = [n for n in names if rundir.run_files(run_dir(out_root, n, preset))]
  if busy and not (resume or overwrite):
    raise rundir.RunDirError(
        f"{', '.join(str(run_dir(out_root, n, preset)) for n in busy)} already hold runs; "
        "continue (finished ones are kept) with --resume, rerun them with --overwrite, or write "
        "elsewhere with --out")
  results, failed, t0 = [], [], time.time()
  path = Path(out_root) / "report.md"
  for i, n in enumerate(names, 1):
    budget = getattr(load(n), "BUDGETS", {}).get(preset)
    last = run_dir(out_root, n, preset) / "results.json"
    if budget:
      budget = f" (budget {budget} s)"
    elif last.exists():  # a finished run's time is the best estimate there is
      budget = f" (last run {json.loads(last.read_text()).get('seconds', '?')} s)"
    runtime.log(f"[{i}/{len(names)}] {n} --preset {preset}{budget or ''}: running into "
                f"{run_dir(out_root, n, preset)}")
    t = time.time()
    try:
      r = run_experiment(n, preset, (), out_root, resume=resume and n in busy,
                         overwrite=overwrite)
    except Preempted:  # SIGTERM: the run saved its checkpoint; stop, resume later
      raise
    except Exception as e:  # noqa: BLE001 -- one experiment's failure must not lose the others
      if debug:
        raise
      from jaxtok.ckpt import short_reason
      r = {"experiment": n, "preset": preset, "seconds": round(time.time() - t, 1),
           "claims": [], "error": short_reason(e, 300)}
      failed.append(n)
    results.append(r)
    path = write_report(results, out_root)
    status = (f"failed: {r['error']}" if "error" in r else
              f"{sum(c['passed'] for c in r['claims'])}/{len(r['claims'])} claims passed")
    runtime.log(f"[{i}/{len(names)}] {n} done in {time.time() - t:.0f} s, {status}; "
                f"{time.time() - t0:.0f} s so far; report: {path}")
  if failed:
    raise RuntimeError(f"{len(failed)} of {len(names)} experiments failed ({', '.join(failed)});"
                       f" see {path}")
  return path
