"""``jaxtok bench kvcompress``: decode speed and cache memory of a compressed KV cache.

For each prompt length x batch x budget (fraction of the prompt kept): plain prefill time, the
observation prefill (the same prefill returning attention statistics) and the compression step's
own time (plan + apply + resize to the budget), decode tokens/s on the full cache and on the
compressed one (greedy ``lax.scan`` of decode steps: time of n steps minus time of 1), and cache
bytes of both. One JSON row per case (DESIGN.md decision 11: ratios measured side by side in one
run). The compressed cache is really smaller (``kvcompress.resize``), so its decode attends to
budget + n slots instead of prompt + n.

kvpress side by side (issue 10 item 6) needs torch + kvpress, which are not installed here: the
bench says so and runs the jaxtok side only.

  jaxtok bench kvcompress                       # prompt 2048 and 8192, batch 1 and 8
  jaxtok bench kvcompress --quick               # prompt 1024, batch 1, budget 10%
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxtok bench kvcompress", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="smollm2-135m", help="registered name, .gguf, HF dir, or "
                 "'random-tiny'")
  p.add_argument("--prompt-len", default="2048,8192", help="comma-separated")
  p.add_argument("--batch", default="1,8", help="comma-separated")
  p.add_argument("--budgets", default="0.05,0.1,0.25", help="fractions of the prompt kept")
  p.add_argument("--policy", default="snapkv")
  p.add_argument("--window", type=int, default=32)
  p.add_argument("--new-tokens", type=int, default=32)
  p.add_argument("--repeats", type=int, default=3)
  p.add_argument("--quick", action="store_true")
  p.add_argument("--json", type=Path, default=None, help="write the rows here")
  return p


def _best(fn, repeats):
  out = fn()  # compile + warm up
  jax.block_until_ready(out)
  best = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    best = min(best, time.perf_counter() - t0)
  return best, out


def _load(name):
  if name == "random-tiny":
    from flax import nnx
    from jaxtok.nn.config import ModelConfig
    from jaxtok.nn.transformer import init_model
    cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                      max_len=4096)
    return (cfg, *nnx.split(init_model(cfg, 0), nnx.Param))
  from jaxtok import models
  m = models.load(name)
  return m.cfg, m.graphdef, m.params


def run_case(cfg, graphdef, params, policy, prompt_len, batch, ratios, *, window, new_tokens,
             repeats):
  from jaxtok import kvcompress as kc
  from jaxtok.cache import init_cache
  from jaxtok.decode import decode_step, prefill

  tokens = jax.random.randint(jax.random.key(0), (batch, prompt_len), 0, cfg.vocab_size)
  lens = jnp.full((batch,), prompt_len, jnp.int32)
  cap = prompt_len + new_tokens

  # params are arguments, never closed over (closed-over weights become constants XLA folds)
  @functools.partial(jax.jit, static_argnames=("n",))
  def steps(params, cache, logits, n):
    def body(carry, _):
      c, lg = carry
      tok = jnp.argmax(lg, -1).astype(jnp.int32)
      lg, c = decode_step(graphdef, params, c, tok)
      return (c, lg), tok
    return jax.lax.scan(body, (cache, logits), None, length=n)[1]

  def decode_rate(cache, logits):
    t1, _ = _best(lambda: steps(params, cache, logits, 1), repeats)
    tn, _ = _best(lambda: steps(params, cache, logits, new_tokens), repeats)
    return batch * (new_tokens - 1) / (tn - t1) if tn > t1 else float("nan")  # noise: no rate

  plain = jax.jit(lambda pr, t: prefill(graphdef, pr, init_cache(cfg, batch, cap), t, lens))
  prefill_s, (logits, full_cache) = _best(lambda: plain(params, tokens), repeats)
  observe = jax.jit(lambda pr, t: kc.observe(graphdef, pr, init_cache(cfg, batch, cap), t,
                                             window))
  observe_s, (_, cache, obs) = _best(lambda: observe(params, tokens), repeats)
  full_rate = decode_rate(full_cache, logits)
  full_bytes = kc.cache_bytes(full_cache)
  rows = []
  for r in ratios:
    b_tok = max(window + 1, int(r * prompt_len))
    budget = policy.allocate(kc.uniform(cfg.n_layers, cfg.kv_heads, b_tok), obs)
    arrays = kc.budget_arrays(budget, batch)
    small_cap = int(budget.array.max()) + new_tokens
    comp = jax.jit(lambda c, o, a: kc.resize(kc.compress_arrays(c, policy, a, o).cache,
                                             small_cap))
    compress_s, small = _best(lambda: comp(cache, obs.replace(prompt_len=0), arrays), repeats)
    rate = decode_rate(small, logits)
    rows.append({"prompt_len": prompt_len, "batch": batch, "policy": policy.name,
                 "budget_fraction": r, "budget_tokens": b_tok, "prefill_s": prefill_s,
                 "observe_prefill_s": observe_s, "compress_s": compress_s,
                 "compress_over_prefill": compress_s / prefill_s,
                 "observe_overhead": (observe_s + compress_s) / prefill_s - 1.0,
                 "decode_tok_s_full": full_rate, "decode_tok_s_compressed": rate,
                 "decode_speedup": rate / full_rate, "cache_bytes_full": full_bytes,
                 "cache_bytes_compressed": kc.cache_bytes(small),
                 "cache_bytes_ratio": kc.cache_bytes(small) / full_bytes})
  return rows


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from jaxtok import kvcompress as kc
  if args.quick:
    args.prompt_len, args.batch, args.budgets = "1024", "1", "0.1"
  lens = [int(x) for x in args.prompt_len.split(",")]
  batches = [int(x) for x in args.batch.split(",")]
  ratios = [float(x) for x in args.budgets.split(",")]
  policy = kc.make(args.policy)
  cfg, graphdef, params = _load(args.model)
  if importlib.util.find_spec("kvpress") is None or importlib.util.find_spec("torch") is None:
    print("kvpress side by side: torch/kvpress not importable here; jaxtok side only")
  rows = []
  hdr = (f"{'prompt':>6} {'B':>2} {'kept':>5} {'prefill s':>9} {'+obs+comp':>9} "
         f"{'full tok/s':>10} {'comp tok/s':>10} {'speedup':>7} {'bytes':>6}")
  print(hdr)
  for p in lens:
    for b in batches:
      for row in run_case(cfg, graphdef, params, policy, p, b, ratios, window=args.window,
                          new_tokens=args.new_tokens, repeats=args.repeats):
        rows.append(row)
        print(f"{p:>6} {b:>2} {row['budget_fraction']:>5.0%} {row['prefill_s']:>9.3f} "
              f"{row['observe_overhead']:>9.1%} {row['decode_tok_s_full']:>10.1f} "
              f"{row['decode_tok_s_compressed']:>10.1f} {row['decode_speedup']:>7.2f} "
              f"{row['cache_bytes_ratio']:>6.1%}", flush=True)
        print("JSON:" + json.dumps(row), flush=True)
  if args.json:
    args.json.write_text(json.dumps(rows, indent=2))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
