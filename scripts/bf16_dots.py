"""What XLA:CPU does with bf16 dots on this machine (issue 8's bf16 question), as a table.

  python scripts/bf16_dots.py

For SmolLM2-135M's matmul shapes at M = 1, 8, 64, 512 rows, fp32 vs bf16 operands (fp32
accumulation), time and GFLOP/s side by side in one run; and whether the compiled bf16
matrix-vector product converts its operands to fp32 (the `convert` ops in the optimized HLO).
"""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def _best(f, *args, n=30, rounds=5):
  jax.block_until_ready(f(*args))
  best = float("inf")
  for _ in range(rounds):
    t0 = time.perf_counter()
    for _ in range(n):
      out = f(*args)
    jax.block_until_ready(out)
    best = min(best, (time.perf_counter() - t0) / n)
  return best


def main() -> None:
  dot = jax.jit(lambda a, w: jnp.dot(a, w, preferred_element_type=jnp.float32))
  tied = jax.jit(lambda h, e: jnp.einsum("td,vd->tv", h, e, preferred_element_type=jnp.float32))
  print("| op | M | fp32 ms | bf16 ms | fp32 GFLOP/s | bf16 GFLOP/s | bf16 / fp32 time |")
  print("|---|---|---|---|---|---|---|")
  for name, fn, (k, n) in (("x @ w_up [576, 1536]", dot, (576, 1536)),
                           ("tied unembedding [49152, 576]", tied, (576, 49152))):
    for m in (1, 8, 64, 512):
      times = []
      for dt in (jnp.float32, jnp.bfloat16):
        a = jnp.ones((m, k), dt)
        w = jnp.ones((k, n) if fn is dot else (n, k), dt)
        times.append(_best(fn, a, w, n=10 if m == 512 else 30))
      flop = 2 * m * k * n / 1e9
      print(f"| {name} | {m} | {times[0] * 1e3:.2f} | {times[1] * 1e3:.2f} | {flop / times[0]:.0f} | "
            f"{flop / times[1]:.0f} | {times[1] / times[0]:.2f} |")
  a, w = jnp.ones((1, 576), jnp.bfloat16), jnp.ones((576, 1536), jnp.bfloat16)
  hlo = dot.lower(a, w).compile().as_text()
  converts = [l.strip().split(" = ")[1].split("{")[0] for l in hlo.splitlines() if " convert(" in l]
  print(f"\nbf16 [1, 576] x [576, 1536] compiles to converts of {converts} then an fp32 dot")
  a8 = jnp.ones((8, 576), jnp.bfloat16)
  hlo8 = dot.lower(a8, w).compile().as_text()
  print(f"bf16 [8, 576] x [576, 1536]: {sum(' convert(' in l for l in hlo8.splitlines())} converts "
        "(a bf16 dot)")


if __name__ == "__main__":
  main()
