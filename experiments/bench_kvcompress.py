"""``jaxtok bench kvcompress``: decode speed and cache memory of a compressed KV cache.

For each prompt length x batch x budget (fraction of the prompt kept): plain prefill time, the
observation prefill (the same prefill returning attention statistics) and the compression step's
own time (plan + apply + resize to the budget), decode tokens/s on the full cache and on the
compressed one (greedy ``lax.scan`` of decode steps: time of n steps minus time of 1), and cache
bytes of both. One JSON row per case (DESIGN.md decision 11: ratios measured side by side in one
run). The compressed cache is really smaller (``kvcompress.resize``), so its decode attends to
budget + n slots instead of prompt + n.

kvpress side by side (issue 10 item 6, ``kvpress_side.py``): with ``--torch-python PATH`` (a
Python with torch + transformers + kvpress) the same weights and tokens run through kvpress's
press for the policy (StreamingLLM, SnapKV, PyramidKV, TOVA, KNorm), and each row gains
kvpress's plain prefill time, its prefill-with-press time (kvpress compresses inside the
prefill's forward hooks, so its compression step's cost is the difference) and its decode
tokens/s on the compressed cache.

  jaxtok bench kvcompress                       # prompt 2048 and 8192, batch 1 and 8
  jaxtok bench kvcompress --quick               # prompt 1024, batch 1, budget 10%
  jaxtok bench kvcompress --prompt-len 8192 --batch 8 --repeats 1 --synthetic-cache
      # decode tok/s, cache bytes, compression time on a random 8192 x 8 cache (no prefill)
  jaxtok bench kvcompress --quick --torch-python /work/torchvenv/bin/python   # + kvpress
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok import decode
from jaxtok import kvcompress as kc
from jaxtok.cache import init_cache
from jaxtok_experiments.kvpress_side import KVPRESS_POLICIES, kvpress_side
from jaxtok_experiments.timing import best


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
  p.add_argument("--synthetic-cache", action="store_true", help="random keys/values and "
                 "statistics instead of a prefill: decode tok/s, cache bytes and the compression "
                 "step's time only (no prefill time; accuracy meaningless)")
  p.add_argument("--json", type=Path, default=None, help="write the rows here")
  p.add_argument("--torch-python", default=None, help="a Python with torch + transformers + "
                 "kvpress: run kvpress side by side on the same weights and tokens")
  return p


def _greedy(model, cache, logits_BxV, n):
  """n greedy tokens through the engine's decode loop (the rate measured)."""
  state = decode.initial_state(cache, logits_BxV, jax.random.key(0), max_new_tokens=n)
  return decode.decode_loop(model, state, sampling=decode.Sampling(), eos_id=None).tokens_BxN


# the Model (and so the weights) is an argument, never closed over (closed-over weights become
# constants XLA folds)
steps = jax.jit(_greedy, static_argnames=("n",))
steps_donated = jax.jit(_greedy, static_argnames=("n",), donate_argnums=(1,))


def _compiled_compress(policy, cache, obs, b_tok: int, new_tokens: int):
  """A call of the ahead-of-time compiled compression of ``cache`` to ``b_tok`` tokens per
  head (after ``policy.allocate``), straight into ``budget + new_tokens`` slots."""
  budget = policy.allocate(kc.uniform(len(cache.layers), cache.layers[0].length.shape[1], b_tok),
                           obs)
  arrays = kc.budget_arrays(budget, cache.batch)
  cap = int(budget.array.max()) + new_tokens
  obs0 = obs.replace(prompt_len=0)
  comp = jax.jit(lambda c, o, a: kc.compress_arrays(c, policy, a, o, capacity=cap).cache
                 ).lower(cache, obs0, arrays).compile()
  return lambda: comp(cache, obs0, arrays)


def synthetic(cfg, batch, prompt_len, capacity, window, seed=0):
  """(cache, observation) with ``prompt_len`` valid slots of random keys/values and random
  positive attention statistics - no prefill. Decode time and the compression step's time do
  not depend on the values (attention and top-k cost the same), so this measures them where a
  real 8192 x 8 prefill does not fit the shared machine's memory or time; it says nothing about
  accuracy. Built layer by layer (each a fresh buffer, so a decode can take it over)."""
  from jaxtok.cache import KVCache, LayerKV
  from jaxtok.nn.attention import AttnStats
  shape = (batch, cfg.kv_heads, capacity)
  valid = jnp.arange(capacity)[None, None, :] < prompt_len
  layers, total, win = [], [], []
  for l in range(cfg.n_layers):
    key = jax.random.fold_in(jax.random.key(seed), l)
    k1, k2, k3, k4 = jax.random.split(key, 4)
    kv = lambda k: jnp.where(valid[..., None], jax.random.normal(k, shape + (cfg.dh,),
                                                                 jnp.float32), 0.0)
    layers.append(LayerKV(k=kv(k1), v=kv(k2), length=jnp.full(shape[:2], prompt_len, jnp.int32),
                          pos=jnp.broadcast_to(jnp.where(valid, jnp.arange(capacity, dtype=jnp.int32),
                                                    -1), shape)))
    st = lambda k: jnp.where(valid, jax.random.uniform(k, shape), 0.0)
    t, w = st(k3), st(k4)
    total.append(AttnStats(sum_BxKxS=t, last_BxKxS=w))
    win.append(AttnStats(sum_BxKxS=w, last_BxKxS=w))
  next_pos = jnp.full((batch,), prompt_len, jnp.int32)
  cache = KVCache(layers=tuple(layers), next_pos=next_pos)
  obs = kc.Observation(total=tuple(total), window=tuple(win), tokens_BxS=jnp.zeros(
      (batch, capacity), jnp.int32), next_pos_B=next_pos, window_size=window,
      prompt_len=prompt_len)
  return cache, obs


def _synthetic_case(model, policy, prompt_len, batch, ratios, *, window, new_tokens, repeats):
  """``run_case`` on a random cache (``synthetic``): the compressed caches are made first, then
  the full cache's decode runs on fresh copies it takes over (donated), so the peak holds one
  full cache, not three (8192 x 8 fp32 SmolLM2: 3 GB each)."""
  cfg = model.cfg
  cap = prompt_len + new_tokens
  logits = jnp.zeros((batch, cfg.vocab_size), jnp.float32)
  cache, obs = synthetic(cfg, batch, prompt_len, cap, window)
  full_bytes = kc.cache_bytes(cache)
  small = []
  for r in ratios:
    b_tok = max(window + 1, int(r * prompt_len))
    compress_s, c_small = best(_compiled_compress(policy, cache, obs, b_tok, new_tokens), repeats)
    small.append((r, b_tok, compress_s, c_small))
  del cache, obs

  def fresh_rate(n):
    seconds = float("inf")
    for i in range(1 + max(repeats, 1)):  # the first call compiles
      c = synthetic(cfg, batch, prompt_len, cap, window, seed=i)[0]
      jax.block_until_ready(c)
      t0 = time.perf_counter()
      jax.block_until_ready(steps_donated(model, c, logits, n=n))
      if i:
        seconds = min(seconds, time.perf_counter() - t0)
      del c
    return seconds

  t1, tn = fresh_rate(1), fresh_rate(new_tokens)
  full_rate = batch * (new_tokens - 1) / (tn - t1) if tn > t1 else float("nan")
  rows = []
  for r, b_tok, compress_s, c_small in small:
    rate = _decode_rate(model, c_small, logits, batch, new_tokens, repeats)
    rows.append({"prompt_len": prompt_len, "batch": batch, "policy": policy.name,
                 "vocab_size": cfg.vocab_size, "budget_fraction": r, "budget_tokens": b_tok,
                 "synthetic_cache": True, "prefill_s": None, "observe_prefill_s": None,
                 "compress_s": compress_s, "compress_over_prefill": None,
                 "observe_overhead": None, "decode_tok_s_full": full_rate,
                 "decode_tok_s_compressed": rate, "decode_speedup": rate / full_rate,
                 "cache_bytes_full": full_bytes, "cache_bytes_compressed": kc.cache_bytes(c_small),
                 "cache_bytes_ratio": kc.cache_bytes(c_small) / full_bytes})
  return rows


def _decode_rate(model, cache, logits, batch, new_tokens, repeats):
  """Greedy tokens/s: time of ``new_tokens`` steps minus time of one (no rate under noise)."""
  t1, _ = best(lambda: steps(model, cache, logits, n=1), max(repeats, 1))
  tn, _ = best(lambda: steps(model, cache, logits, n=new_tokens), max(repeats, 1))
  return batch * (new_tokens - 1) / (tn - t1) if tn > t1 else float("nan")


def run_case(model, policy, prompt_len, batch, ratios, *, window, new_tokens, repeats,
             synthetic_cache=False):
  if synthetic_cache:
    return _synthetic_case(model, policy, prompt_len, batch, ratios, window=window,
                           new_tokens=new_tokens, repeats=repeats)
  cfg = model.cfg
  tokens = jax.random.randint(jax.random.key(0), (batch, prompt_len), 0, cfg.vocab_size)
  lens = jnp.full((batch,), prompt_len, jnp.int32)
  cap = prompt_len + new_tokens
  # compiled ahead of time, so --repeats 0 times one run of each (an 8192 x 8 prefill takes
  # minutes on the 2-core machine)
  plain = jax.jit(lambda m, t: decode.prefill(m, init_cache(m.cfg, batch, cap), t, lens)
                  ).lower(model, tokens).compile()
  prefill_s, (logits, full_cache) = best(lambda: plain(model, tokens), repeats)
  observe = jax.jit(lambda m, t: kc.observe(m, init_cache(m.cfg, batch, cap), t, window)
                    ).lower(model, tokens).compile()
  observe_s, (_, cache, obs) = best(lambda: observe(model, tokens), repeats)
  full_rate = _decode_rate(model, full_cache, logits, batch, new_tokens, repeats)
  full_bytes = kc.cache_bytes(full_cache)
  del full_cache  # only its rate and size are needed: free it before the compressed runs
  rows = []
  for r in ratios:
    b_tok = max(window + 1, int(r * prompt_len))
    compress_s, small = best(_compiled_compress(policy, cache, obs, b_tok, new_tokens), repeats)
    rate = _decode_rate(model, small, logits, batch, new_tokens, repeats)
    rows.append({"prompt_len": prompt_len, "batch": batch, "policy": policy.name,
                 "vocab_size": cfg.vocab_size,
                 "budget_fraction": r, "budget_tokens": b_tok, "prefill_s": prefill_s,
                 "synthetic_cache": False,
                 "observe_prefill_s": observe_s, "compress_s": compress_s,
                 "compress_over_prefill": compress_s / prefill_s,
                 "observe_overhead": (observe_s + compress_s) / prefill_s - 1.0,
                 "decode_tok_s_full": full_rate, "decode_tok_s_compressed": rate,
                 "decode_speedup": rate / full_rate, "cache_bytes_full": full_bytes,
                 "cache_bytes_compressed": kc.cache_bytes(small),
                 "cache_bytes_ratio": kc.cache_bytes(small) / full_bytes})
  return rows


def _add_kvpress(python, rows, prompt_len, batch, *, window, new_tokens, repeats):
  """kvpress on the same tokens (``run_case``'s seeded ids) and budgets: prefill with and
  without the press, decode tokens/s on the full and the compressed cache."""
  tokens = np.asarray(jax.random.randint(jax.random.key(0), (batch, prompt_len), 0,
                                         rows[0]["vocab_size"]))
  cases = [["full", prompt_len]] + [[r["policy"], r["budget_tokens"]] for r in rows]
  out = kvpress_side(python, {"window": window, "timing": {
      "tokens": tokens.tolist(), "repeats": repeats, "new_tokens": new_tokens,
      "cases": cases}})["timing"]
  full = out[0]
  for row, kp in zip(rows, out[1:]):
    row.update({"kvpress_plain_prefill_s": full["prefill_s"], "kvpress_prefill_s": kp["prefill_s"],
                "kvpress_overhead": kp["prefill_s"] / full["prefill_s"] - 1.0,
                "kvpress_decode_tok_s_full": full.get("decode_tok_s"),
                "kvpress_decode_tok_s_compressed": kp.get("decode_tok_s")})


def main(argv=None) -> int:
  args = _parser().parse_args(argv)
  from jaxtok import models
  if args.quick:
    args.prompt_len, args.batch, args.budgets = "1024", "1", "0.1"
  lens = [int(x) for x in args.prompt_len.split(",")]
  batches = [int(x) for x in args.batch.split(",")]
  ratios = [float(x) for x in args.budgets.split(",")]
  policy = kc.make(args.policy)
  model = models.load(args.model, max_len=4096 if args.model == "random-tiny" else None)
  torch_python = args.torch_python
  if torch_python is None and importlib.util.find_spec("kvpress") and importlib.util.find_spec(
      "torch"):
    import sys
    torch_python = sys.executable
  if torch_python is None:
    print("kvpress side by side: no --torch-python and torch/kvpress not importable here; "
          "jaxtok side only")
  elif policy.name not in KVPRESS_POLICIES:
    print(f"kvpress side by side: kvpress has no {policy.name}; jaxtok side only")
    torch_python = None
  rows = []
  hdr = (f"{'prompt':>6} {'B':>2} {'kept':>5} {'prefill s':>9} {'+obs+comp':>9} "
         f"{'full tok/s':>10} {'comp tok/s':>10} {'speedup':>7} {'bytes':>6}")
  print(hdr)
  for p in lens:
    for b in batches:
      case_rows = run_case(model, policy, p, b, ratios, window=args.window,
                           new_tokens=args.new_tokens, repeats=args.repeats,
                           synthetic_cache=args.synthetic_cache)
      if torch_python:
        _add_kvpress(torch_python, case_rows, p, b, window=args.window,
                     new_tokens=args.new_tokens, repeats=args.repeats)
      for row in case_rows:
        rows.append(row)
        pf = "-" if row["prefill_s"] is None else f"{row['prefill_s']:.3f}"
        ov = "-" if row["observe_overhead"] is None else f"{row['observe_overhead']:.1%}"
        print(f"{p:>6} {b:>2} {row['budget_fraction']:>5.0%} {pf:>9} {ov:>9} "
              f"{row['decode_tok_s_full']:>10.1f} "
              f"{row['decode_tok_s_compressed']:>10.1f} {row['decode_speedup']:>7.2f} "
              f"{row['cache_bytes_ratio']:>6.1%}", flush=True)
        if "kvpress_prefill_s" in row:
          print(f"{'':>6} {'':>2} kvpress: prefill {row['kvpress_plain_prefill_s']:.3f} s, with "
                f"press {row['kvpress_prefill_s']:.3f} s ({row['kvpress_overhead']:+.1%}), "
                f"decode full {row['kvpress_decode_tok_s_full']:.1f} tok/s, compressed "
                f"{row['kvpress_decode_tok_s_compressed']:.1f}", flush=True)
        print("JSON:" + json.dumps(row), flush=True)
  if args.json:
    args.json.write_text(json.dumps(rows, indent=2))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
