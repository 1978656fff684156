"""``jaxtok bench decode``: prefill and cached-decode throughput of a pretrained model.

For each dtype x batch: prefill tokens/s (one jitted forward that fills the KV cache) and decode
tokens/s (``jaxtok.decode.generate``'s on-device loop, greedy: the time of n new tokens minus the
time of one, for n - 1 steps), after a warm-up round that compiles; best of --repeats rounds. With ``--torch-python PATH`` (an interpreter with torch + transformers, e.g.
/work/venv311/bin/python), or when torch is importable here, Hugging Face transformers runs the
same weights (the .gguf file or the Hugging Face directory) and shapes in the same run, on the
GPU when torch sees one, and the table gives jaxtok/transformers ratios (DESIGN.md decision 11:
ratios side by side, one run).

  jaxtok bench decode                                  # prompt 512, 128 new, batch 1 and 8
  jaxtok bench decode --quick --torch-python /work/venv311/bin/python
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

from jaxtok_experiments.torch_ref import run_json

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
  from jaxtok.models import load

  rows = []
  t, n = args.prompt_len, args.new_tokens
  for dtype in dtypes:
    model = load(args.model, dtype=dtype)
    cfg = model.cfg
    if t + n > cfg.max_len:
      raise ValueError(f"--prompt-len {t} + --new-tokens {n} exceeds the model context "
                       f"{cfg.max_len}")
    # Prefill alone = the driver's start (fresh cache, prefill, empty output buffer).
    begin = jax.jit(lambda m, x, l: decode.start(m, x, l, jax.random.key(0),  # noqa: E731
                                                 capacity=t + n, max_new_tokens=n))
    for b in batches:
      rng = np.random.default_rng(0)
      prompt = jnp.asarray(rng.integers(100, cfg.vocab_size, (b, t)), jnp.int32)
      lens = jnp.full((b,), t, jnp.int32)
      best = [float("inf")] * 3  # prefill, generate 1 token, generate n tokens
      for rep in range(args.repeats + 1):  # the first round compiles
        times = []
        for new in (0, 1, n):
          t0 = time.perf_counter()
          if new:
            jax.block_until_ready(decode.generate(model, prompt, lens, max_new_tokens=new,
                                                  capacity=t + n))
          else:
            jax.block_until_ready(begin(model, prompt, lens))
          times.append(time.perf_counter() - t0)
        if rep:
          best = [min(a, x) for a, x in zip(best, times)]
      steps_s = best[2] - best[1]  # the n - 1 decode steps after the first token
      rows.append({"dtype": dtype, "batch": b, "prefill_s": best[0], "generate_s": best[2],
                   "prefill_tok_s": b * t / best[0],
                   "decode_tok_s": b * (n - 1) / steps_s if steps_s > 0 else None})
      print(f"  jaxtok {dtype} batch {b}: prefill {rows[-1]['prefill_tok_s']:.0f} tok/s, "
            f"decode {_fmt(rows[-1]['decode_tok_s'])} tok/s", file=sys.stderr)
  return rows, cfg.vocab_size


def _torch_rows(args, batches, dtypes, python: str, vocab: int) -> dict:
  from jaxtok.models import registry

  path = Path(args.model) if Path(args.model).exists() else registry.resolve(args.model)
  job = {"model": str(path.resolve()), "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
         "batches": batches, "dtypes": dtypes, "repeats": args.repeats, "vocab": vocab}
  return run_json(python, "torch_decode.py", job)


def _fmt(tok_s: float | None) -> str:
  # None: generating n tokens did not take measurably longer than generating one (noise wins
  # on tiny models); the table says so rather than printing a meaningless rate.
  return "-" if tok_s is None else f"{tok_s:.1f}"


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
    hd = _fmt(h["decode_tok_s"]) if h else "-"
    rp = f"{r['prefill_tok_s'] / h['prefill_tok_s']:.2f}x" if h else "-"
    rd = (f"{r['decode_tok_s'] / h['decode_tok_s']:.2f}x"
          if h and r["decode_tok_s"] and h["decode_tok_s"] else "-")
    lines.append(f"| {r['dtype']} | {r['batch']} | {r['prefill_tok_s']:.0f} | "
                 f"{_fmt(r['decode_tok_s'])} | {hp} | {hd} | {rp} | {rd} |")
  print("\n".join(lines))
  result = {"model": args.model, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
            "backend": jax.default_backend(), "jaxtok": rows, "transformers": ref,
            "table": lines}
  Path(args.out).write_text(json.dumps(result, indent=2))
  print(f"wrote {args.out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
