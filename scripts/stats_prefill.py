"""Cost of attention statistics at prefill: plain vs stats prefill, side by side in one run.

  python scripts/stats_prefill.py [--prompt-len 2048,8192] [--repeats 1] [--before-rev REV]

For each prompt length (batch 1, fp32 SmolLM2 unless --model): a plain fresh-cache prefill
(``jaxtok.decode.prefill``) and the same forward with ``return_stats=True`` (per-slot attention
statistics of every layer, what H2O / TOVA / SnapKV / EMS read); with ``--observe`` also
``jaxtok.kvcompress.observe`` (the two-forward observation prefill, window 32). With
``--before-rev`` the stats prefill is also built with ``jaxtok/nn/attention.py`` as it was at
that git revision (its functions patched into the module while tracing), so before and after
are timed in the same process under the same load. Every variant is compiled ahead of time,
the timed calls are interleaved and the best of ``--repeats`` is kept, in wall-clock seconds
and in this process's CPU seconds (all threads; on a shared machine the CPU time measures the
work, the wall clock also other processes' load). The load average is printed with each row
(issue 10: the stats prefill should add <= 10% to the plain one).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
import types
from pathlib import Path

_PATCHED = ("attention", "cached_attention", "slot_stats")


def _module_at(rev: str):
  repo = Path(__file__).resolve().parents[1]
  src = subprocess.check_output(["git", "-C", str(repo), "show", f"{rev}:jaxtok/nn/attention.py"])
  mod = types.ModuleType(f"attention_at_{rev}")
  sys.modules[mod.__name__] = mod  # dataclasses look their module up there
  exec(compile(src, f"attention.py@{rev}", "exec"), mod.__dict__)  # noqa: S102 - our own file
  return mod


@contextlib.contextmanager
def _patched(mod):
  from jaxtok.nn import attention as attn_lib
  saved = {n: getattr(attn_lib, n) for n in _PATCHED}
  try:
    if mod is not None:
      for n in _PATCHED:
        setattr(attn_lib, n, getattr(mod, n))
    yield
  finally:
    for n, f in saved.items():
      setattr(attn_lib, n, f)


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="smollm2-135m")
  p.add_argument("--prompt-len", default="2048,8192")
  p.add_argument("--repeats", type=int, default=1)
  p.add_argument("--window", type=int, default=32)
  p.add_argument("--observe", action="store_true")
  p.add_argument("--before-rev", default=None)
  p.add_argument("--json", default=None)
  args = p.parse_args()
  import jax
  import jax.numpy as jnp

  from jaxtok import kvcompress as kc
  from jaxtok.cache import init_cache
  from jaxtok.decode import extend, prefill
  from jaxtok.models import load

  before = None if args.before_rev is None else _module_at(args.before_rev)
  model = load(args.model, dtype="float32")
  params, cfg = model.params, model.cfg
  rows = []
  for t in [int(x) for x in args.prompt_len.split(",")]:
    tokens = jax.random.randint(jax.random.key(0), (1, t), 100, cfg.vocab_size)
    lens = jnp.full((1,), t, jnp.int32)
    pos = jnp.arange(t, dtype=jnp.int32)[None]

    def plain(pr, x):
      return prefill(model.with_params(pr), init_cache(cfg, 1, t), x, lens)

    def make_stats():
      # A new function object per variant: jit caches traces by function, and the variants
      # differ only in the attention module patched in while tracing.
      def stats(pr, x):
        out, cache = extend(model.with_params(pr), init_cache(cfg, 1, t), x, pos, fresh=True,
                            return_stats=True, logits_at_BxN=jnp.array([[t - 1]]))
        return out.logits, cache, out.stats
      return stats

    variants = {"plain_s": (plain, None), "stats_s": (make_stats(), None)}
    if before is not None:
      variants["stats_before_s"] = (make_stats(), before)
    if args.observe:
      variants["observe_s"] = (lambda pr, x: kc.observe(model.with_params(pr),
                                                        init_cache(cfg, 1, t), x, args.window),
                               None)
    compiled, flops = {}, {}
    for name, (fn, mod) in variants.items():
      with _patched(mod):
        compiled[name] = jax.jit(fn).lower(params, tokens).compile()
      cost = compiled[name].cost_analysis()
      cost = cost[0] if isinstance(cost, list) else cost
      flops[name.replace("_s", "_gflop")] = round(float(cost.get("flops", 0.0)) / 1e9, 1)
    best = {k: float("inf") for k in compiled}
    cpu = {k: float("inf") for k in compiled}
    for _ in range(args.repeats):
      for k, f in compiled.items():
        t0, c0 = time.perf_counter(), time.process_time()
        jax.block_until_ready(f(params, tokens))
        best[k] = min(best[k], time.perf_counter() - t0)
        cpu[k] = min(cpu[k], time.process_time() - c0)
    row = {"prompt_len": t, **best, **{k.replace("_s", "_cpu_s"): v for k, v in cpu.items()},
           **flops, "loadavg": os.getloadavg()[0]}
    for k in best:
      if k != "plain_s":
        row[k.replace("_s", "_overhead")] = best[k] / best["plain_s"] - 1
        row[k.replace("_s", "_cpu_overhead")] = cpu[k] / cpu["plain_s"] - 1
    rows.append(row)
    for label, d, suffix in (("wall", best, "_overhead"), ("cpu ", cpu, "_cpu_overhead")):
      print(f"prompt {t:>5} {label}: plain {d['plain_s']:.2f} s  " + "  ".join(
          f"{k[:-2]} {d[k]:.2f} s ({row[k.replace('_s', suffix)]:+.0%})"
          for k in d if k != "plain_s") + f"  load {row['loadavg']:.1f}", flush=True)
    print(f"prompt {t:>5} XLA GFLOP: " + "  ".join(f"{k[:-6]} {v}" for k, v in flops.items()),
          flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
