"""Run a transformers/PyTorch reference script of ``experiments/refs/`` in another Python (torch
is never a jaxtok dependency) and read back the JSON it prints on a line starting with
``JSON:``."""
from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

REFS = Path(__file__).parent / "refs"


def run_json(python: str, script: str, job: dict) -> dict:
  """Runs ``refs/<script>`` (a file name, e.g. "torch_decode.py") with the JSON ``job`` as its
  argument."""
  path = REFS / script
  if not path.is_file():
    raise FileNotFoundError(f"script: no reference script {path}")
  # Run from a neutral directory so this repo's kernels/ folder never shadows the hub `kernels`
  # package that transformers probes for.
  # OpenMP's default active waiting makes torch 10-40x slower on a shared, oversubscribed CPU
  # (measured: a [1, 576] x [576, 1536] matmul 12 ms instead of 0.3 ms); passive waiting keeps
  # the reference at its real speed.
  env = {**os.environ, "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
  proc = subprocess.run([python, str(path), json.dumps(job)], capture_output=True, text=True,
                        cwd=tempfile.gettempdir(), env=env)
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:")]
  if proc.returncode or not line:
    raise RuntimeError(f"transformers reference failed ({python}):\n{proc.stderr[-2000:]}")
  return json.loads(line[-1][5:])
