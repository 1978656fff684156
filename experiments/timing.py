"""Shared timing helpers of the benchmarks and experiments."""
from __future__ import annotations

import time

import jax


def best(fn, repeats: int):
  """(best seconds of ``repeats`` timed calls of ``fn`` after a warm-up call, its output);
  ``repeats=0``: one timed call and no warm-up (for ahead-of-time compiled functions whose
  single run is minutes long). Every call is waited for (``jax.block_until_ready``)."""
  if repeats < 0:
    raise ValueError(f"repeats: expected >= 0, got {repeats}")
  if repeats == 0:
    t0 = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - t0, out
  out = jax.block_until_ready(fn())  # compile + warm up
  seconds = float("inf")
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    seconds = min(seconds, time.perf_counter() - t0)
  return seconds, out
