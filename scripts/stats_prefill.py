"""Cost of attention statistics at prefill: plain vs stats prefill, side by side in one run.

  python scripts/stats_prefill.py [--prompt-len 2048,8192] [--repeats 3] [--json out.json]

For each prompt length (batch 1, fp32 SmolLM2 unless --model): a plain fresh-cache prefill
(``jaxtok.decode.prefill``), the same forward with ``return_stats=True`` (per-slot attention
statistics of every layer, what H2O / TOVA / SnapKV / EMS read) and ``jaxtok.kvcompress.observe``
(the two-forward observation prefill with a window of 32). The timed calls are interleaved
(plain, stats, observe, plain, ...) and the best of ``--repeats`` is kept, so machine load drifts
hit all three alike; the load average is printed with the table (issue 10: the stats prefill
should add <= 10% to the plain one).
"""
from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="smollm2-135m")
  p.add_argument("--prompt-len", default="2048,8192")
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--window", type=int, default=32)
  p.add_argument("--json", default=None)
  args = p.parse_args()
  import jax
  import jax.numpy as jnp

  from jaxtok import kvcompress as kc
  from jaxtok.cache import init_cache
  from jaxtok.decode import prefill
  from jaxtok.models import load
  from jaxtok.nn import forward

  model = load(args.model, dtype="float32")
  g, params, cfg = model.graphdef, model.params, model.cfg
  rows = []
  for t in [int(x) for x in args.prompt_len.split(",")]:
    tokens = jax.random.randint(jax.random.key(0), (1, t), 100, cfg.vocab_size)
    lens = jnp.full((1,), t, jnp.int32)
    pos = jnp.arange(t, dtype=jnp.int32)[None]
    plain = jax.jit(lambda pr, x: prefill(g, pr, init_cache(cfg, 1, t), x, lens))

    @jax.jit
    def stats(pr, x):
      out = forward(g, pr, x, pos, cache=init_cache(cfg, 1, t), fresh_cache=True,
                    return_stats=True, logits_at_BxN=jnp.array([[t - 1]]))
      return out.logits, out.cache, out.stats

    observe = jax.jit(lambda pr, x: kc.observe(g, pr, init_cache(cfg, 1, t), x, args.window))
    fns = {"plain_s": plain, "stats_s": stats, "observe_s": observe}
    best = {k: float("inf") for k in fns}
    for f in fns.values():  # compile + warm up
      jax.block_until_ready(f(params, tokens))
    for _ in range(args.repeats):
      for k, f in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(params, tokens))
        best[k] = min(best[k], time.perf_counter() - t0)
    row = {"prompt_len": t, **best, "stats_overhead": best["stats_s"] / best["plain_s"] - 1,
           "observe_overhead": best["observe_s"] / best["plain_s"] - 1,
           "loadavg": os.getloadavg()[0]}
    rows.append(row)
    print(f"prompt {t:>5}: plain {best['plain_s']:.3f} s  stats {best['stats_s']:.3f} s "
          f"({row['stats_overhead']:+.0%})  observe {best['observe_s']:.3f} s "
          f"({row['observe_overhead']:+.0%})  load {row['loadavg']:.1f}", flush=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(rows, f, indent=1)


if __name__ == "__main__":
  main()
