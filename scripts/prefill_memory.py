"""Peak memory of a long SmolLM2 prefill on this machine (issue 8's linear-memory check).

  python scripts/prefill_memory.py --prompt-len 8192 [--dense]

Prints the compiled prefill's temporaries (XLA memory analysis) and the process's peak RSS after
running it once. --dense forces the [T, T] masked path (a dense causal mask array) for comparison.
"""
from __future__ import annotations

import argparse
import resource
import time


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--model", default="smollm2-135m")
  p.add_argument("--prompt-len", type=int, default=8192)
  p.add_argument("--dense", action="store_true", help="dense [T, T] mask instead of CAUSAL")
  p.add_argument("--compile-only", action="store_true")
  args = p.parse_args()
  import jax
  import jax.numpy as jnp

  from jaxtok import cache as cache_lib
  from jaxtok.decode import extend
  from jaxtok.models import load
  from jaxtok.nn import masks

  model = load(args.model, dtype="float32")
  params, cfg = model.params, model.cfg
  t = args.prompt_len

  def prefill(params, prompt_1xT):
    mask = masks.causal(t, 1) if args.dense else masks.CAUSAL
    out, cache = extend(model.with_params(params), cache_lib.init_cache(cfg, 1, t), prompt_1xT,
                        jnp.arange(t)[None], mask, commit_B=jnp.array([t]), fresh=True,
                        logits_at_BxN=jnp.array([[t - 1]]))
    return out.logits, cache

  prompt = jnp.asarray(jax.random.randint(jax.random.key(0), (1, t), 100, cfg.vocab_size))
  compiled = jax.jit(prefill).lower(params, prompt).compile()
  mem = compiled.memory_analysis()
  print(f"prompt {t} ({'dense mask' if args.dense else 'CAUSAL, chunked'}): arguments "
        f"{mem.argument_size_in_bytes / 2**30:.3f} GiB, outputs {mem.output_size_in_bytes / 2**30:.3f}"
        f" GiB, temporaries {mem.temp_size_in_bytes / 2**30:.3f} GiB")
  if args.compile_only:
    return
  t0 = time.perf_counter()
  jax.block_until_ready(compiled(params, prompt))
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
  print(f"ran in {time.perf_counter() - t0:.1f} s; peak RSS {rss:.2f} GiB")


if __name__ == "__main__":
  main()
