"""Kernel compile gate: `jaxtok kernels check --targets tpu-v5e,tpu-v6e,h100`.

Compiles every registered Pallas kernel (registry.py) at representative shapes and dtypes for
each target with NO device: TPU through libtpu's compile-only topologies (Mosaic -> TPU binary),
H100 through the jax-cuda12 plugin (Triton -> PTX -> cubin with the machine's ptxas). A kernel
that does not compile for a target is a failure (DESIGN.md decision 9): the exit status is 1.

libtpu and the CUDA plugin live in side folders (`--side DIR` holding `tpu/` and `cuda/`, or
$JAXTOK_COMPILE_SIDE; see .ci/compile_kernels.sh) so the main environment keeps its CPU jax.
Each target family compiles in its own subprocess with only its side folder on PYTHONPATH, as
the two plugins were never validated on one path.

  python -m jaxtok_kernels.check --targets tpu-v5e,tpu-v6e,h100 [--side .side] [--json out]
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

from jaxtok_kernels import registry, targets

_WORKER_FLAG = "--_worker"


def _fmt_bytes(n: int) -> str:
  return f"{n / 2**20:.1f}M" if n >= 2**20 else f"{n / 2**10:.0f}K"


def _memory(compiled) -> str:
  try:
    m = compiled.memory_analysis()
  except Exception:  # noqa: BLE001 - some backends do not implement it
    return "-"
  if m is None:
    return "-"
  return (f"arg {_fmt_bytes(m.argument_size_in_bytes)} out {_fmt_bytes(m.output_size_in_bytes)}"
          f" tmp {_fmt_bytes(m.temp_size_in_bytes)}")


def _compile_all(target_names: list[str], dtypes: list[str]) -> list[dict]:
  """Worker body: compile every kernel case for the given targets (one family) in-process."""
  import jax

  rows = []
  for target in target_names:
    fam = targets.family(target)
    try:
      ctx, sharding = targets.abstract_placement(target)
    except Exception as e:  # noqa: BLE001 - a missing plugin is a failing row, not a crash
      rows.append(dict(target=target, kernel="*", shape="*", dtype="*", ok=False,
                       memory="-", seconds=0.0, error=f"{type(e).__name__}: {e}"))
      continue
    with ctx:
      for spec in registry.KERNELS:
        fn = spec.entry(fam)
        for case in spec.cases(dtypes):
          dtype = case.args[0][1]
          sds = [jax.ShapeDtypeStruct(shape, registry.dtype(dt), sharding=sharding)
                 for shape, dt in case.args]
          t0 = time.perf_counter()
          try:
            entry = functools.partial(fn, **dict(case.options))
            compiled = jax.jit(entry).trace(*sds).lower().compile()
            row = dict(ok=True, memory=_memory(compiled), error="")
          except Exception as e:  # noqa: BLE001 - report every compiler error in the table
            msg = " ".join(str(e).split())[:400]
            row = dict(ok=False, memory="-", error=f"{type(e).__name__}: {msg}")
          rows.append(dict(target=target, kernel=spec.name, shape=case.label, dtype=dtype,
                           seconds=round(time.perf_counter() - t0, 2), **row))
  return rows


def side_env(side: str | None, fam: str) -> dict:
  """The environment of a compile-only subprocess for family ``fam`` (tpu | gpu), with that
  family's side install (``side``/tpu or ``side``/cuda) first on the path."""
  env = dict(os.environ)
  env["JAX_PLATFORMS"] = "cpu"          # the compile-only topologies need no live backend
  env["TPU_SKIP_MDS_QUERY"] = "1"       # no GCE metadata server to ask for a TPU host
  env.pop("XLA_FLAGS", None)            # fake-device flags from a test session do not apply
  if side:
    folder = os.path.join(side, {"tpu": "tpu", "gpu": "cuda"}[fam])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (folder, env.get("PYTHONPATH")) if p)
  return env


def _run_family(side: str | None, fam: str, target_names: list[str], dtypes: list[str]):
  cmd = [sys.executable, "-m", "jaxtok_kernels.check", _WORKER_FLAG, "--targets",
         ",".join(target_names), "--dtypes", ",".join(dtypes)]
  proc = subprocess.run(cmd, env=side_env(side, fam), capture_output=True, text=True)
  for line in proc.stdout.splitlines():
    if line.startswith("{"):
      return json.loads(line)["rows"]
  err = " ".join((proc.stderr or "").split()[-60:])
  return [dict(target=t, kernel="*", shape="*", dtype="*", ok=False, memory="-", seconds=0.0,
               error=f"worker exited {proc.returncode}: {err}") for t in target_names]


def format_table(rows: list[dict]) -> str:
  cols = [("target", "target"), ("kernel", "kernel"), ("shape", "shape"), ("dtype", "dtype"),
          ("result", None), ("memory", "memory"), ("s", "seconds")]
  cells = [[str(r[k]) if k else ("compiled" if r["ok"] else "error") for _, k in cols]
           for r in rows]
  widths = [max(len(h), *(len(c[i]) for c in cells)) if cells else len(h)
            for i, (h, _) in enumerate(cols)]
  out = [" | ".join(h.ljust(w) for (h, _), w in zip(cols, widths)),
         "-+-".join("-" * w for w in widths)]
  out += [" | ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells]
  errors = [r for r in rows if not r["ok"]]
  if errors:
    out.append("")
    out += [f"ERROR {r['target']} {r['kernel']} {r['shape']} {r['dtype']}: {r['error']}"
            for r in errors]
  return "\n".join(out)


def parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="jaxtok kernels check", description=__doc__.split("\n")[0])
  parser.add_argument("--targets", default="tpu-v5e,tpu-v6e,h100",
                      help="comma list of " + ",".join([*targets.TPU_TOPOLOGIES,
                                                        *targets.GPU_TARGETS]))
  parser.add_argument("--dtypes", default="float32,bfloat16")
  parser.add_argument("--side", default=os.environ.get("JAXTOK_COMPILE_SIDE"),
                      help="folder with the tpu/ and cuda/ side installs")
  parser.add_argument("--json", default=None, help="also write the rows as JSON here")
  parser.add_argument(_WORKER_FLAG, action="store_true", help=argparse.SUPPRESS)
  return parser


def main(argv: list[str] | None = None) -> int:
  parser_ = parser()
  args = parser_.parse_args(argv)
  target_names = [t for t in args.targets.split(",") if t]
  dtypes = [d for d in args.dtypes.split(",") if d]
  by_family: dict[str, list[str]] = {}
  for t in target_names:
    try:
      by_family.setdefault(targets.family(t), []).append(t)
    except ValueError as e:
      parser_.error(str(e))

  if args._worker:
    print(json.dumps({"rows": _compile_all(target_names, dtypes)}))
    return 0

  rows = []
  for fam, names in by_family.items():
    rows += _run_family(args.side, fam, names, dtypes)
  print(format_table(rows))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)
  failed = sum(not r["ok"] for r in rows)
  print(f"\n{len(rows) - failed}/{len(rows)} compiled" + (f", {failed} FAILED" if failed else ""))
  return 1 if failed or not rows else 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
