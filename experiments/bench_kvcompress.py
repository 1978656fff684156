"""``jaxtok bench kvcompress``: decode speed and cache memory of a compressed KV cache.

For each prompt length x batch x budget (fraction of the prompt kept): plain prefill time, the
observation prefill (the same prefill returning attention statistics) and the compression step's
own time (plan + apply + resize to the budget), decode tokens/s on the full cache and on the
compressed one (greedy ``lax.scan`` of decode steps: time of n steps minus time of 1), and cache
bytes of both. One JSON row per case (DESIGN.md decision 11: ratios measured side by side in one
run). The compressed cache is really smaller (``kvcompress.resize``), so its decode attends to
budget + n slots instead of prompt + n.

kvpress side by side (issue 10 item 6): with ``--torch-python PATH`` (a Python with torch +
transformers + kvpress; torch is never a jaxtok dependency) the same weights (the GGUF jaxtok
loads, dequantised to fp32 by transformers) and the same tokens run through kvpress's press
for the policy (StreamingLLM, SnapKV, PyramidKV, TOVA, KNorm), and each row gains kvpress's
plain prefill time, its prefill-with-press time (kvpress compresses inside the prefill's
forward hooks, so its compression step's cost is the difference) and its decode tokens/s on the
compressed cache. ``kvpress_side`` (also used by the ``kvcompress`` experiment for passkey
accuracy and ΔPPL) is the one entry point to that helper.

  jaxtok bench kvcompress                       # prompt 2048 and 8192, batch 1 and 8
  jaxtok bench kvcompress --quick               # prompt 1024, batch 1, budget 10%
  jaxtok bench kvcompress --prompt-len 8192 --batch 8 --repeats 1 --synthetic-cache
      # decode tok/s, cache bytes, compression time on a random 8192 x 8 cache (no prefill)
  jaxtok bench kvcompress --quick --torch-python /work/torchvenv/bin/python   # + kvpress
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


# kvpress presses by jaxtok policy name; SnapKV/PyramidKV with kvpress's defaults except the
# window (the caller's), which jaxtok's SnapKV(kernel=5, pool_kind="avg") matches slot for slot.
KVPRESS_POLICIES = ("streaming_llm", "snapkv", "pyramidkv", "tova", "knorm")

_KVPRESS_HELPER = r'''
import json, sys, time
from pathlib import Path
import torch, transformers
from transformers import AutoModelForCausalLM, DynamicCache
import kvpress
transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()
torch.set_grad_enabled(False)
job = json.loads(sys.argv[1])
path = Path(job["gguf"])
model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                             dtype=torch.float32).eval()
W, KS, SINKS = job["window"], job.get("kernel", 5), job.get("sinks", 4)

def make(name, n_kept, k_len):
  if name == "full":
    return None
  # kvpress keeps max(1, int(k_len * (1 - ratio))): half a token of slack makes that n_kept
  r = 1.0 - (n_kept + 0.5) / k_len
  return {"streaming_llm": lambda: kvpress.StreamingLLMPress(compression_ratio=r, n_sink=SINKS),
          "snapkv": lambda: kvpress.SnapKVPress(compression_ratio=r, window_size=W,
                                                kernel_size=KS),
          "pyramidkv": lambda: kvpress.PyramidKVPress(compression_ratio=r, window_size=W,
                                                      kernel_size=KS),
          "tova": lambda: kvpress.TOVAPress(compression_ratio=r),
          "knorm": lambda: kvpress.KnormPress(compression_ratio=r)}[name]()

def prefill(ids, press):
  cache = DynamicCache()
  if press is None:
    out = model(ids, past_key_values=cache, logits_to_keep=1)
  else:
    with press(model):
      out = model(ids, past_key_values=cache, logits_to_keep=1)
  return out.logits[:, -1], cache

def kept(cache):
  return sum(l.keys.shape[2] for l in cache.layers) / len(cache.layers)

def greedy(logits, cache, pos, n):
  # as kvpress's pipeline: explicit position ids continue from the uncompressed length
  toks = []
  for i in range(n):
    tok = logits.argmax(-1)
    toks.append(tok)
    if i + 1 < n:
      p = torch.full((tok.shape[0], 1), pos + i, dtype=torch.long)
      logits = model(tok[:, None], past_key_values=cache, position_ids=p).logits[:, -1]
  return torch.stack(toks, 1).tolist()

res = {"passkey": [], "ppl": [], "timing": []}
pk = job.get("passkey")
if pk:
  ctx = torch.tensor(pk["ctx"]); q = torch.tensor(pk["question"])[None].expand(ctx.shape[0], -1)
  n, nq = ctx.shape[1], q.shape[1]
  for name, proto, n_kept in pk["cases"]:
   try:
    if proto == "agnostic":
      logits, cache = prefill(ctx, make(name, n_kept, n))
      kf = kept(cache) / n
      p = torch.arange(n, n + nq)[None].expand(ctx.shape[0], -1)
      logits = model(q, past_key_values=cache, position_ids=p).logits[:, -1]
    else:
      logits, cache = prefill(torch.cat([ctx, q], 1), make(name, n_kept, n + nq))
      kf = kept(cache) / (n + nq)
    toks = greedy(logits, cache, n + nq, pk["answer_tokens"])
    res["passkey"].append({"policy": name, "protocol": proto, "n_kept": n_kept,
                           "kept_fraction": kf, "tokens": toks})
   except RuntimeError as e:  # e.g. PyramidKV's uneven layer lengths break CPU sdpa masks
    res["passkey"].append({"policy": name, "protocol": proto, "n_kept": n_kept,
                           "error": str(e)[:300]})
pp = job.get("ppl")
if pp:
  first = torch.tensor(pp["first"]); rest = torch.tensor(pp["rest"])
  h, m = first.shape[1], rest.shape[1]
  for name, n_kept in pp["cases"]:
   try:
    logits, cache = prefill(first, make(name, n_kept, h))
    p = torch.arange(h, h + m - 1)[None].expand(first.shape[0], -1)
    out = model(rest[:, :-1], past_key_values=cache, position_ids=p).logits
    lg = torch.cat([logits[:, None], out], 1).log_softmax(-1)
    nll = -lg.gather(-1, rest[..., None]).mean().item()
    res["ppl"].append({"policy": name, "n_kept": n_kept, "nll": nll})
   except RuntimeError as e:
    res["ppl"].append({"policy": name, "n_kept": n_kept, "nll": None, "error": str(e)[:300]})
tm = job.get("timing")
if tm:
  ids = torch.tensor(tm["tokens"])
  b, n = ids.shape
  def best(fn):
    fn()
    t = float("inf")
    for _ in range(tm.get("repeats", 2)):
      t0 = time.perf_counter(); out = fn(); t = min(t, time.perf_counter() - t0)
    return t, out
  for name, n_kept in tm["cases"]:
    s, (logits, cache) = best(lambda: prefill(ids, make(name, n_kept, n)))
    row = {"policy": name, "n_kept": n_kept, "prefill_s": s}
    nd = tm.get("new_tokens", 0)
    if nd > 1:
      # decode rate on copies of this cache: n steps minus one step, as the jaxtok side
      import copy
      def dec(k):
        c = copy.deepcopy(cache); t0 = time.perf_counter(); greedy(logits, c, n, k)
        return time.perf_counter() - t0
      dec(2)
      t1 = min(dec(1) for _ in range(2)); tn = min(dec(nd) for _ in range(2))
      row["decode_tok_s"] = b * (nd - 1) / (tn - t1) if tn > t1 else float("nan")
    res["timing"].append(row)
print("JSON:" + json.dumps(res))
'''


def kvpress_side(python: str, job: dict) -> dict:
  """Runs kvpress on the same GGUF weights and tokens (the ``_KVPRESS_HELPER`` job: ``window``,
  optional ``passkey`` {ctx, question, answer_tokens, cases [(policy, protocol, n_kept)]},
  ``ppl`` {first, rest, cases [(policy, n_kept)]}, ``timing`` {tokens, repeats, new_tokens,
  cases [(policy, n_kept)]}; policy "full" = no press). Returns the helper's JSON."""
  from jaxtok.models import registry
  from jaxtok_experiments.torch_ref import run_json
  return run_json(python, _KVPRESS_HELPER, {"gguf": str(registry.resolve("smollm2-135m")),
                                            **job})


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


def _best(fn, repeats):
  """Best of ``repeats`` timed calls after a warm-up call; ``repeats=0``: one timed call and no
  warm-up (for ahead-of-time compiled functions whose single run is minutes long)."""
  if repeats == 0:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out
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


def synthetic(cfg, batch, prompt_len, capacity, window, seed=0):
  """(cache, observation) with ``prompt_len`` valid slots of random keys/values and random
  positive attention statistics - no prefill. Decode time and the compression step's time do
  not depend on the values (attention and top-k cost the same), so this measures them where a
  real 8192 x 8 prefill does not fit the shared machine's memory or time; it says nothing about
  accuracy. Built layer by layer (each a fresh buffer, so a decode can take it over)."""
  from jaxtok.cache import KVCache, LayerKV
  from jaxtok.kvcompress.base import Observation
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
  obs = Observation(total=tuple(total), window=tuple(win), tokens_BxS=jnp.zeros(
      (batch, capacity), jnp.int32), next_pos_B=next_pos, window_size=window,
      prompt_len=prompt_len)
  return cache, obs


def _synthetic_case(cfg, graphdef, params, policy, prompt_len, batch, ratios, steps, *, window,
                    new_tokens, repeats):
  """``run_case`` on a random cache (``synthetic``): the compressed caches are made first, then
  the full cache's decode runs on fresh copies it takes over (donated), so the peak holds one
  full cache, not three (8192 x 8 fp32 SmolLM2: 3 GB each)."""
  from jaxtok import kvcompress as kc
  cap = prompt_len + new_tokens
  logits = jnp.zeros((batch, cfg.vocab_size), jnp.float32)
  cache, obs = synthetic(cfg, batch, prompt_len, cap, window)
  full_bytes = kc.cache_bytes(cache)
  obs0 = obs.replace(prompt_len=0)
  small = []
  for r in ratios:
    b_tok = max(window + 1, int(r * prompt_len))
    budget = policy.allocate(kc.uniform(cfg.n_layers, cfg.kv_heads, b_tok), obs)
    arrays = kc.budget_arrays(budget, batch)
    small_cap = int(budget.array.max()) + new_tokens
    comp = jax.jit(lambda c, o, a: kc.compress_arrays(c, policy, a, o, capacity=small_cap).cache
                   ).lower(cache, obs0, arrays).compile()
    compress_s, c_small = _best(lambda: comp(cache, obs0, arrays), repeats)
    small.append((r, b_tok, compress_s, c_small))
  del cache, obs, obs0
  donated = jax.jit(steps.__wrapped__ if hasattr(steps, "__wrapped__") else steps,
                    static_argnames=("n",), donate_argnums=(1,))

  def fresh_rate(n):
    best = float("inf")
    for i in range(1 + max(repeats, 1)):  # the first call compiles
      c = synthetic(cfg, batch, prompt_len, cap, window, seed=i)[0]
      jax.block_until_ready(c)
      t0 = time.perf_counter()
      jax.block_until_ready(donated(params, c, logits, n=n))
      if i:
        best = min(best, time.perf_counter() - t0)
      del c
    return best

  t1, tn = fresh_rate(1), fresh_rate(new_tokens)
  full_rate = batch * (new_tokens - 1) / (tn - t1) if tn > t1 else float("nan")
  rows = []
  for r, b_tok, compress_s, c_small in small:
    t1s, _ = _best(lambda: steps(params, c_small, logits, 1), max(repeats, 1))
    tns, _ = _best(lambda: steps(params, c_small, logits, new_tokens), max(repeats, 1))
    rate = batch * (new_tokens - 1) / (tns - t1s) if tns > t1s else float("nan")
    rows.append({"prompt_len": prompt_len, "batch": batch, "policy": policy.name,
                 "vocab_size": cfg.vocab_size, "budget_fraction": r, "budget_tokens": b_tok,
                 "synthetic_cache": True, "prefill_s": None, "observe_prefill_s": None,
                 "compress_s": compress_s, "compress_over_prefill": None,
                 "observe_overhead": None, "decode_tok_s_full": full_rate,
                 "decode_tok_s_compressed": rate, "decode_speedup": rate / full_rate,
                 "cache_bytes_full": full_bytes, "cache_bytes_compressed": kc.cache_bytes(c_small),
                 "cache_bytes_ratio": kc.cache_bytes(c_small) / full_bytes})
  return rows


def run_case(cfg, graphdef, params, policy, prompt_len, batch, ratios, *, window, new_tokens,
             repeats, synthetic_cache=False):
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

  if synthetic_cache:
    return _synthetic_case(cfg, graphdef, params, policy, prompt_len, batch, ratios, steps,
                           window=window, new_tokens=new_tokens, repeats=repeats)

  def decode_rate(cache, logits):
    t1, _ = _best(lambda: steps(params, cache, logits, 1), max(repeats, 1))
    tn, _ = _best(lambda: steps(params, cache, logits, new_tokens), max(repeats, 1))
    return batch * (new_tokens - 1) / (tn - t1) if tn > t1 else float("nan")  # noise: no rate

  # compiled ahead of time, so --repeats 0 times one run of each (an 8192 x 8 prefill takes
  # minutes on the 2-core machine)
  if synthetic_cache:
    prefill_s = observe_s = None
    logits = jnp.zeros((batch, cfg.vocab_size), jnp.float32)
    cache, obs = synthetic(cfg, batch, prompt_len, cap, window)
    full_cache = cache
  else:
    plain = jax.jit(lambda pr, t: prefill(graphdef, pr, init_cache(cfg, batch, cap), t, lens)
                    ).lower(params, tokens).compile()
    prefill_s, (logits, full_cache) = _best(lambda: plain(params, tokens), repeats)
    observe = jax.jit(lambda pr, t: kc.observe(graphdef, pr, init_cache(cfg, batch, cap), t,
                                               window)).lower(params, tokens).compile()
    observe_s, (_, cache, obs) = _best(lambda: observe(params, tokens), repeats)
  full_rate = decode_rate(full_cache, logits)
  full_bytes = kc.cache_bytes(full_cache)
  if not synthetic_cache:
    del full_cache  # only its rate and size are needed: free it before the compressed runs
  rows = []
  for r in ratios:
    b_tok = max(window + 1, int(r * prompt_len))
    budget = policy.allocate(kc.uniform(cfg.n_layers, cfg.kv_heads, b_tok), obs)
    arrays = kc.budget_arrays(budget, batch)
    small_cap = int(budget.array.max()) + new_tokens
    obs0 = obs.replace(prompt_len=0)
    comp = jax.jit(lambda c, o, a: kc.compress_arrays(c, policy, a, o, capacity=small_cap).cache
                   ).lower(cache, obs0, arrays).compile()
    compress_s, small = _best(lambda: comp(cache, obs0, arrays), repeats)
    rate = decode_rate(small, logits)
    rows.append({"prompt_len": prompt_len, "batch": batch, "policy": policy.name,
                 "vocab_size": cfg.vocab_size,
                 "budget_fraction": r, "budget_tokens": b_tok, "prefill_s": prefill_s,
                 "synthetic_cache": synthetic_cache,
                 "observe_prefill_s": observe_s, "compress_s": compress_s,
                 "compress_over_prefill": compress_s / prefill_s if prefill_s else None,
                 "observe_overhead": ((observe_s + compress_s) / prefill_s - 1.0) if prefill_s
                 else None,
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
  from jaxtok import kvcompress as kc
  if args.quick:
    args.prompt_len, args.batch, args.budgets = "1024", "1", "0.1"
  lens = [int(x) for x in args.prompt_len.split(",")]
  batches = [int(x) for x in args.batch.split(",")]
  ratios = [float(x) for x in args.budgets.split(",")]
  policy = kc.make(args.policy)
  cfg, graphdef, params = _load(args.model)
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
      case_rows = run_case(cfg, graphdef, params, policy, p, b, ratios, window=args.window,
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
