"""``jaxtok bench decode``: prefill and cached-decode throughput of a pretrained model.

For each dtype x batch: prefill tokens/s (one jitted forward that fills the KV cache) and decode
tokens/s (``jaxtok.decode.generate``'s on-device loop, greedy, minus its prefill), after a warm-up
call that compiles. With ``--torch-python PATH`` (an interpreter with torch + transformers, e.g.
/work/venv311/bin/python), or when torch is importable here, Hugging Face transformers runs the
same weights (``from_pretrained(dir, gguf_file=...)``) and shapes in the same run, and the table
gives jaxtok/transformers ratios (DESIGN.md decision 11: ratios side by side, one run).

  jaxtok bench decode                                  # prompt 512, 128 new, batch 1 and 8
  jaxtok bench decode --quick --torch-python /work/venv311/bin/python
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

# Runs in the torch interpreter (which need not have jaxtok): argv[1] is a JSON job description.
_TORCH_HELPER = r'''
import json, sys, time
import torch
from pathlib import Path
from transformers import AutoModelForCausalLM
job = json.loads(sys.argv[1])
path = Path(job["gguf"])
out = []
base = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                            dtype=torch.float32).eval()
for dtype in job["dtypes"]:
  model = base.to(getattr(torch, dtype))
  for b in job["batches"]:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(100, job["vocab"], (b, job["prompt_len"]), generator=gen)
    mask = torch.ones_like(ids)
    n = job["new_tokens"]
    best_p, best_g = float("inf"), float("inf")
    with torch.no_grad():
      for rep in range(job["repeats"] + 1):  # first round warms up
        t0 = time.perf_counter()
        model(ids, attention_mask=mask, use_cache=True)
        t1 = time.perf_counter()
        model.generate(ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0)
        t2 = time.perf_counter()
        if rep:
          best_p, best_g = min(best_p, t1 - t0), min(best_g, t2 - t1)
    out.append({"dtype": dtype, "batch": b, "prefill_s": best_p, "generate_s": best_g,
                "prefill_tok_s": b * job["prompt_len"] / best_p,
                "decode_tok_s": b * n / max(best_g - best_p, 1e-9)})
print("JSON:" + json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                            "rows": out}))
'''


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="jaxtok bench decode", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--model", default="smollm2-135m")
  p.add_argument("--prompt-len", type=int, default=512)
  p.add_argument("--new-tokens", type=int, default=128)
  p.add_argument("--batch", default="1,8", help="comma-separated batch sizes")
  p.add_argument("--dtype", default="float32,bfloat16", help="comma-separated")
  p.add_argument("--repeats", type=int, default=1, help="timed runs after the warm-up (min)")
  p.add_argument("--quick", action="store_true", help="prompt 128, 32 new tokens")
  p.add_argument("--torch-python", default=None,
                 help="interpreter with torch+transformers for the reference (default: this one "
                      "if torch is importable)")
  p.add_argument("--no-torch", action="store_true")
  p.add_argument("--out", default="bench_decode.json")
  return p


def _jax_rows(args, batches, dtypes) -> tuple[list[dict], int]:
  import jax
  import jax.numpy as jnp

  from jaxtok import decode
  from jaxtok.cache import init_cache
  from jaxtok.models import load

  rows = []
  t, n = args.prompt_len, args.new_tokens
  for dtype in dtypes:
    model = load(args.model, dtype=dtype)
    g, params, cfg = model.graphdef, model.params, model.cfg
    if t + n > cfg.max_len:
      raise ValueError(f"--prompt-len {t} + --new-tokens {n} exceeds the model context "
                       f"{cfg.max_len}")
    prefill = jax.jit(lambda p, c, x, l: decode.prefill(g, p, c, x, l))  # noqa: E731
    for b in batches:
      rng = np.random.default_rng(0)
      prompt = jnp.asarray(rng.integers(100, cfg.vocab_size, (b, t)), jnp.int32)
      lens = jnp.full((b,), t, jnp.int32)
      best_p = best_g = float("inf")
      for rep in range(args.repeats + 1):
        cache = init_cache(cfg, b, t + n)
        t0 = time.perf_counter()
        jax.block_until_ready(prefill(params, cache, prompt, lens))
        t1 = time.perf_counter()
        jax.block_until_ready(decode.generate(g, params, prompt, lens, max_new_tokens=n,
                                              capacity=t + n))
        t2 = time.perf_counter()
        if rep:
          best_p, best_g = min(best_p, t1 - t0), min(best_g, t2 - t1)
      rows.append({"dtype": dtype, "batch": b, "prefill_s": best_p, "generate_s": best_g,
                   "prefill_tok_s": b * t / best_p,
                   "decode_tok_s": b * n / max(best_g - best_p, 1e-9)})
      print(f"  jaxtok {dtype} batch {b}: prefill {rows[-1]['prefill_tok_s']:.0f} tok/s, "
            f"decode {rows[-1]['decode_tok_s']:.1f} tok/s", file=sys.stderr)
  return rows, cfg.vocab_size


def _torch_rows(args, batches, dtypes, python: str, vocab: int) -> dict:
  from jaxtok.models import registry

  path = Path(args.model) if Path(args.model).is_file() else registry.resolve(args.model)
  if path.suffix != ".gguf":
    raise ValueError("--torch-python: the transformers reference reads .gguf models only")
  job = {"gguf": str(path), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
         "batches": batches, "dtypes": dtypes, "repeats": args.repeats, "vocab": vocab}
  # Run from a neutral directory: `python -c` puts the cwd on sys.path, and this repo's kernels/
  # folder would shadow the hub `kernels` package that transformers probes for.
  proc = subprocess.run([python, "-c", _TORCH_HELPER, json.dumps(job)], capture_output=True,
                        text=True, cwd=tempfile.gettempdir())
  line = [ln for ln in proc.stdout.splitlines() if ln.startswith("JSON:")]
  if proc.returncode or not line:
    raise RuntimeError(f"transformers reference failed ({python}):\n{proc.stderr[-2000:]}")
  return json.loads(line[-1][5:])


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  if args.quick:
    args.prompt_len, args.new_tokens = 128, 32
  batches = [int(b) for b in args.batch.split(",")]
  dtypes = args.dtype.split(",")
  for d in dtypes:
    if d not in ("float32", "bfloat16"):
      raise ValueError(f"--dtype: expected float32/bfloat16, got {d!r}")
  import jax
  print(f"decode bench: {args.model}, prompt {args.prompt_len}, {args.new_tokens} new tokens, "
        f"backend {jax.default_backend()} ({jax.device_count()} devices)", file=sys.stderr)
  rows, vocab = _jax_rows(args, batches, dtypes)
  ref = None
  python = args.torch_python or (sys.executable if importlib.util.find_spec("torch") else None)
  if python and not args.no_torch:
    print(f"  transformers reference via {python} ...", file=sys.stderr)
    try:
      ref = _torch_rows(args, batches, dtypes, python, vocab)
    except (RuntimeError, ValueError, OSError) as e:
      print(f"  transformers reference skipped: {e}", file=sys.stderr)
  by_key = {(r["dtype"], r["batch"]): r for r in (ref or {}).get("rows", [])}
  head = ("| dtype | batch | prefill tok/s | decode tok/s | HF prefill tok/s | HF decode tok/s |"
          " prefill ratio | decode ratio |")
  lines = [head, "|---|---|---|---|---|---|---|---|"]
  for r in rows:
    h = by_key.get((r["dtype"], r["batch"]))
    hp = f"{h['prefill_tok_s']:.0f}" if h else "-"
    hd = f"{h['decode_tok_s']:.1f}" if h else "-"
    rp = f"{r['prefill_tok_s'] / h['prefill_tok_s']:.2f}x" if h else "-"
    rd = f"{r['decode_tok_s'] / h['decode_tok_s']:.2f}x" if h else "-"
    lines.append(f"| {r['dtype']} | {r['batch']} | {r['prefill_tok_s']:.0f} | "
                 f"{r['decode_tok_s']:.1f} | {hp} | {hd} | {rp} | {rd} |")
  print("\n".join(lines))
  result = {"model": args.model, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "backend": jax.default_backend(), "jaxtok": rows, "transformers": ref,
            "table": lines}
  Path(args.out).write_text(json.dumps(result, indent=2))
  print(f"wrote {args.out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
