"""Kernel benchmark: `jaxtok bench kernels [--out results.json]`.

On TPU/GPU: times each Pallas kernel against its jnp reference side by side in one run (the
machines are shared and noisy, so only ratios measured together mean anything; DESIGN.md
decision 11) and reports the achieved HBM bandwidth against the device's peak - tree attention
at small T is memory-bound: it must stream the live part of the KV cache once per kv head.
On CPU only correctness can be checked: the kernels run in interpret mode against the reference.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

# Peak HBM bandwidth in bytes/s by device_kind substring (vendor datasheets).
_PEAK_BW = {"TPU v4": 1.2e12, "TPU v5 lite": 8.19e11, "TPU v5e": 8.19e11, "TPU v5p": 2.765e12,
            "TPU v6": 1.64e12, "H100": 3.35e12, "H200": 4.8e12, "A100": 2.0e12}

# (label, B, T, H, K, S, Dh, live cache fraction)
_CASES = [("decode", 8, 1, 32, 8, 4096, 128, 1.0), ("decode-half", 8, 1, 32, 8, 4096, 128, 0.5),
          ("tree", 4, 64, 32, 8, 4096, 128, 1.0), ("prefill", 1, 128, 32, 8, 8192, 128, 1.0),
          ("decode-smollm2", 8, 1, 9, 3, 8192, 64, 0.5)]


def _peak_bandwidth(device) -> float | None:
  kind = getattr(device, "device_kind", "")
  return next((bw for key, bw in _PEAK_BW.items() if key in kind), None)


def _inputs(b, t, h, k, s, dh, live, dtype, seed=0):
  from jaxtok_kernels.tree_attention.sample_inputs import random_inputs
  return random_inputs(b, t, h, k, s, dh, dtype, seed=seed, lens=[int(s * live)] * b,
                       mask_p=None)


def _time(fn, args, iters: int) -> float:
  out = fn(*args)
  out.block_until_ready()
  t0 = time.perf_counter()
  for _ in range(iters):
    out = fn(*args)
  out.block_until_ready()
  return (time.perf_counter() - t0) / iters


def _accelerator_rows(iters: int, dtype_name: str, cases=_CASES) -> list[dict]:
  """Kernel (implementation="pallas") vs reference on each case: times, bandwidth, error."""
  import jax
  import jax.numpy as jnp
  from jaxtok_kernels.numerics import tolerance
  from jaxtok_kernels.tree_attention import tree_attention, tree_attention_reference

  dtype = jnp.dtype(dtype_name)
  peak = _peak_bandwidth(jax.devices()[0])
  kernel = jax.jit(lambda *a: tree_attention(*a, implementation="pallas"))
  reference = jax.jit(tree_attention_reference)
  rows = []
  for label, b, t, h, k, s, dh, live in cases:
    args = _inputs(b, t, h, k, s, dh, live, dtype)
    err = float(jnp.max(jnp.abs(kernel(*args).astype(jnp.float32)
                                - reference(*args).astype(jnp.float32))))
    t_kernel, t_ref = _time(kernel, args, iters), _time(reference, args, iters)
    # Minimum traffic: the live cache (k and v) once, plus q, the new block and the output.
    moved = (2 * b * int(s * live) * k * dh + 2 * b * t * h * dh + 2 * b * t * k * dh) * dtype.itemsize
    bw = moved / t_kernel
    rows.append(dict(kernel="tree_attention", case=f"{label} B{b} T{t} H{h}/K{k} S{s} Dh{dh}",
                     dtype=dtype_name, kernel_ms=round(t_kernel * 1e3, 4),
                     reference_ms=round(t_ref * 1e3, 4), speedup=round(t_ref / t_kernel, 2),
                     mbytes=round(moved / 1e6, 3), gbps=round(bw / 1e9, 1),
                     frac_peak=None if peak is None else round(bw / peak, 3), max_err=err,
                     ok=err <= tolerance(dtype, int(s * live) + t)))
  return rows


def _cpu_rows() -> list[dict]:
  import jax
  import jax.numpy as jnp
  from jaxtok_kernels.numerics import tolerance
  from jaxtok_kernels.tree_attention import (GpuConfig, TpuConfig, tree_attention_gpu,
                                             tree_attention_reference, tree_attention_tpu)
  rows = []
  args = _inputs(2, 5, 4, 2, 40, 16, 0.6, jnp.float32)  # ragged: 24 live slots, block 16
  ref = jax.jit(tree_attention_reference)(*args)
  for name, fn in (("tpu (interpret)", tree_attention_tpu), ("gpu (interpret)", tree_attention_gpu)):
    config = (TpuConfig if fn is tree_attention_tpu else GpuConfig)(block_s=16)
    err = float(jnp.max(jnp.abs(fn(*args, config=config, interpret=True) - ref)))
    rows.append(dict(kernel="tree_attention", case=f"{name} B2 T5 H4/K2 S40 Dh16",
                     dtype="float32", max_err=err, ok=err <= tolerance(jnp.float32, 29)))
  return rows


def _table(rows: list[dict]) -> str:
  keys = list(dict.fromkeys(k for r in rows for k in r))
  cells = [[str(r.get(k, "")) for k in keys] for r in rows]
  widths = [max(len(k), *(len(c[i]) for c in cells)) for i, k in enumerate(keys)]
  lines = [" | ".join(k.ljust(w) for k, w in zip(keys, widths)), "-+-".join("-" * w for w in widths)]
  return "\n".join(lines + [" | ".join(c.ljust(w) for c, w in zip(cell, widths)) for cell in cells])


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="jaxtok bench kernels", description=__doc__.split("\n")[0])
  parser.add_argument("--out", default=None, help="write the rows as JSON here")
  parser.add_argument("--iters", type=int, default=20)
  parser.add_argument("--dtype", default="bfloat16")
  args = parser.parse_args(argv)
  from jaxtok_kernels import dispatch
  platform = dispatch.backend()
  if platform in ("tpu", "gpu"):
    import jax
    # float32 means float32: without this, GPU matmuls of both sides would run in TF32.
    precision = "highest" if args.dtype == "float32" else None
    with jax.default_matmul_precision(precision):
      rows = _accelerator_rows(args.iters, args.dtype)
  else:
    print(f"backend {platform}: no accelerator, so only correctness can be checked "
          "(kernels in interpret mode vs the jnp reference); no timings.")
    rows = _cpu_rows()
  print(_table(rows))
  if args.out:
    with open(args.out, "w") as f:
      json.dump({"backend": platform, "rows": rows}, f, indent=1)
  return 0 if all(r.get("ok", True) for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
