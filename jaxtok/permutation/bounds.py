"""Inverse permutation learning: the exact causal bounds and the Lemma-1 check (Alur, Hays,
Raghavan, Shah, arXiv 2509.24125, Theorem 1 / Lemma 1); the layout is ``jaxtok.permutation.task``.

Under a causal mask the read row of answer j sees the Y_P rows i <= j + m; Y_j is *unrecoverable*
when sigma^{-1}(j) > j + m, and then costs its prior variance (0.25 per Bernoulli(1/2) entry):
E[#unrecoverable] = sum_j max(0, n-1-j-m)/n, so the exact bound is 0.25 d (n-1)/2 at m = 0.
Token version: accuracy <= 1 - u (1 - 1/k), cross-entropy >= u log k with u = E[#unrecoverable]/n,
exact match <= E[k^{-#unrecoverable}] (rook numbers on the Ferrers board of unrecoverable cells).
"""
from __future__ import annotations

import math
from fractions import Fraction
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.config import require
from jaxtok.permutation.task import check_task


# ----------------------------------------------------------------------------- exact bounds


def unrecoverable(perm_BxN: np.ndarray, n_scratch: int = 0) -> np.ndarray:
  """bool[B, n]: answer j cannot depend on Y_j under a causal mask (sigma^{-1}(j) > j + m)."""
  perm_BxN = np.asarray(perm_BxN)
  inv_BxN = np.argsort(perm_BxN, axis=1)
  return inv_BxN > np.arange(perm_BxN.shape[1]) + n_scratch


def expected_unrecoverable(n: int, n_scratch: int = 0) -> Fraction:
  """E[#unrecoverable rows] for a uniform sigma: sum_j P(sigma^{-1}(j) > j + m), exact."""
  check_task(n, n_scratch)
  return sum((Fraction(max(0, n - 1 - j - n_scratch), n) for j in range(n)), Fraction(0))


def causal_mse_lower_bound(n: int, *, n_scratch: int = 0, d: int | None = None,
                           read: Literal["last", "P"] = "last") -> float:
  """Exact minimum expected per-example squared error of a causal model on the vector task
  (Bernoulli(1/2) entries cost 0.25 each when unrecoverable). ``read="last"``: answers at the
  last n rows (the Y_P block when m = 0: 0.25 d (n-1)/2); ``read="P"``: at the P block, which
  sees no Y_P row at all (0.25 n d)."""
  d = n if d is None else d
  require(read in ("last", "P"), "read", "last | P", read)
  if read == "P":
    return 0.25 * n * d
  return 0.25 * d * float(expected_unrecoverable(n, n_scratch))


def unrecoverable_distribution(n: int, n_scratch: int = 0) -> list[Fraction]:
  """P(#unrecoverable = h), h = 0..n, exactly: rook numbers r_k of the Ferrers board of
  unrecoverable (answer j, source row i > j + m) cells, then inclusion-exclusion
  N_h = sum_k (-1)^{k-h} C(k, h) r_k (n-k)!."""
  check_task(n, n_scratch)
  # Row j may not use its max(0, n-1-j-m) highest columns: nested sets, so a row with f cells
  # has f - t free columns after t rooks went into the (smaller, nested) earlier rows.
  sizes = sorted(max(0, n - 1 - j - n_scratch) for j in range(n))
  rooks = [1] + [0] * n
  for f in sizes:
    for t in range(n - 1, -1, -1):
      rooks[t + 1] += rooks[t] * max(0, f - t)
  total = math.factorial(n)
  return [Fraction(sum((-1) ** (k - h) * math.comb(k, h) * rooks[k] * math.factorial(n - k)
                       for k in range(h, n + 1)), total) for h in range(n + 1)]


def causal_token_bounds(n: int, k: int, n_scratch: int = 0) -> dict[str, float]:
  """The best any causal model can do on the token task, exactly: per answer token accuracy
  (max) and cross-entropy (min, nats), and whole-answer exact match (max)."""
  u = float(expected_unrecoverable(n, n_scratch)) / n
  dist = unrecoverable_distribution(n, n_scratch)
  exact = float(sum(p * Fraction(1, k) ** h for h, p in enumerate(dist)))
  return {"accuracy": 1.0 - u * (1.0 - 1.0 / k), "cross_entropy": u * math.log(k),
          "exact_match": exact, "unrecoverable_fraction": u}


# ----------------------------------------------------------------------------- Lemma 1


def perturb_rows_after(key: jax.Array, x, t: int, *, vocab: int | None = None):
  """A copy of ``x`` ([B, T, ...] floats, or [B, T] token ids with ``vocab``) whose rows > t
  are redrawn at random; rows <= t are untouched."""
  require(0 <= t < x.shape[1] - 1, "t", f"in [0, T-1) = [0, {x.shape[1] - 1})", t)
  after = (jnp.arange(x.shape[1]) > t).reshape((1, -1) + (1,) * (x.ndim - 2))
  if vocab is not None:
    new = jax.random.randint(key, x.shape, 0, vocab, dtype=x.dtype)
  else:
    new = x + jax.random.normal(key, x.shape, x.dtype)
  return jnp.where(after, new, x)


def lemma1_violation(apply_fn: Callable, x, x_perturbed, t: int) -> float:
  """max |apply_fn(x)[:, :t+1] - apply_fn(x_perturbed)[:, :t+1]| over every output leaf (each
  [B, T, ...]); Lemma 1 says it is exactly 0 under a causal mask."""
  a, b = apply_fn(x), apply_fn(x_perturbed)
  diffs = jax.tree.map(lambda u, v: jnp.max(jnp.abs(u[:, :t + 1] - v[:, :t + 1])), a, b)
  return float(max(jax.tree.leaves(diffs)))
