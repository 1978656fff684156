"""Inverse permutation learning: the task (layout, batches, masks, source, token scores).

Alur, Hays, Raghavan, Shah, "The Impossibility of Inverse Permutation Learning in Transformer
Models" (arXiv 2509.24125). A permutation matrix P (row i is the one-hot e_{sigma(i)}) and the
permuted string Y_P = P Y are given; the target is the original string Y = P^T Y_P.

Layout (one for every variant, so the variants differ only in the mask): the input is
``[P; Y_P; 0_m]`` with ``m`` content-free scratch rows (m = 0 for the plain task), T = 2n + m,
and the answer for row j is read at row ``T - n + j``, i.e. at the last n rows (the Y_P block
when m = 0, the scratch block when m >= n).

Theorem 1 / Lemma 1: under a causal mask row t of every layer depends on input rows <= t only.
The read row of Y_j sees the Y_P rows i <= j + m, and Y_j sits at Y_P row sigma^{-1}(j), so it is
*unrecoverable* when sigma^{-1}(j) > j + m. Its entries are then independent of everything the
row sees (the rows of Y are i.i.d.), so the best prediction is the prior mean; for
Bernoulli(1/2) entries each costs 0.25 squared error. For a uniform sigma,
E[#unrecoverable] = sum_j max(0, n-1-j-m)/n, = (n-1)/2 at m = 0, which gives the exact bound
0.25 * d * (n-1)/2 (d = n columns: 0.25 n(n-1)/2; n=6: 3.75) on the expected per-example
squared error of any causal model reading at the Y_P block.

The token version (one symbol of an alphabet of size k per row, jaxtok's transformer) has the
same structure: per answer token, accuracy <= 1 - u (1 - 1/k) and cross-entropy >= u log k with
u = E[#unrecoverable]/n; whole-answer exact match <= E[k^{-#unrecoverable}] (computed exactly
by rook numbers on the Ferrers board of unrecoverable (row, source) cells).
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.config import require
from jaxtok.data.sources import SeededSource
from jaxtok.nn import masks
from jaxtok.nn.transformer import forward
from jaxtok.train.losses import LossAux, cross_entropy, model_inputs, weighted_mean

Variant = Literal["causal", "unmasked", "prefix", "scratch"]


def check_task(n: int, n_scratch: int) -> None:
  require(isinstance(n, (int, np.integer)) and n >= 2, "n", "an integer >= 2", n)
  require(isinstance(n_scratch, (int, np.integer)) and n_scratch >= 0, "n_scratch",
          "an integer >= 0", n_scratch)


def seq_len(n: int, n_scratch: int = 0) -> int:
  """T = 2n + m rows: [P; Y_P; 0_m]."""
  check_task(n, n_scratch)
  return 2 * n + n_scratch


def read_rows(n: int, n_scratch: int = 0) -> np.ndarray:
  """The rows where the answers Y_0..Y_{n-1} are read: the last n rows, i32[n]."""
  t = seq_len(n, n_scratch)
  return np.arange(t - n, t, dtype=np.int32)


def sample_perms(rng: np.random.Generator, batch: int, n: int) -> np.ndarray:
  """Uniform permutations sigma, i32[B, n] (argsort of i.i.d. uniforms)."""
  return np.argsort(rng.random((batch, n)), axis=1).astype(np.int32)


def vector_batch(rng: np.random.Generator, batch: int, n: int, *,
                 n_scratch: int = 0) -> dict[str, np.ndarray]:
  """The paper's vector task: ``x`` f32[B, T, n] = [P; Y_P; 0_m] (d = n columns, as in the
  code: Y ~ Bernoulli(1/2)^{n x n}), ``y`` f32[B, n, d] = Y = P^T Y_P, ``perm`` i32[B, n] = sigma,
  ``read`` i32[B, n] (rows holding the answers)."""
  check_task(n, n_scratch)
  d = n  # rows of P and of Y_P share the input width
  perm_BxN = sample_perms(rng, batch, n)
  y_BxNxD = rng.integers(0, 2, (batch, n, d)).astype(np.float32)
  p_BxNxN = np.eye(n, dtype=np.float32)[perm_BxN]  # P[i] = e_{sigma(i)}
  yp_BxNxD = np.take_along_axis(y_BxNxD, perm_BxN[:, :, None], axis=1)  # Y_P[i] = Y[sigma(i)]
  x = np.concatenate([p_BxNxN, yp_BxNxD, np.zeros((batch, n_scratch, d), np.float32)], axis=1)
  read = np.broadcast_to(read_rows(n, n_scratch), (batch, n)).copy()
  return {"x": x, "y": y_BxNxD, "perm": perm_BxN, "read": read}


def bayes_inverse(x_BxTxN: np.ndarray | jax.Array, n: int):
  """P^T Y_P from the input (the zero-loss answer; the code's ``bayes``)."""
  p, yp = x_BxTxN[:, :n], x_BxTxN[:, n:2 * n]
  return jnp.einsum("bij,bik->bjk", p, yp)


def token_vocab(n: int, k: int) -> dict[str, int]:
  """Ids: permutation indices [0, n), string symbols [n, n + k), the scratch token n + k."""
  require(k >= 2, "k", "an alphabet of >= 2 symbols", k)
  return {"symbol0": n, "scratch": n + k, "size": n + k + 1}


def token_batch(rng: np.random.Generator, batch: int, n: int, k: int, *,
                n_scratch: int = 0) -> dict[str, np.ndarray]:
  """Token task for jaxtok's transformer: ``inputs`` i32[B, T] = [sigma(0..n-1); Y_P; SCRATCH^m]
  with Y a string of n symbols uniform over k; ``targets`` i32[B, T] hold Y_j at the read row
  of j (zero elsewhere) and ``weights`` f32[B, T] select the n read rows."""
  check_task(n, n_scratch)
  voc = token_vocab(n, k)
  t = seq_len(n, n_scratch)
  perm_BxN = sample_perms(rng, batch, n)
  y_BxN = rng.integers(0, k, (batch, n)).astype(np.int32)
  yp_BxN = np.take_along_axis(y_BxN, perm_BxN, axis=1)
  scratch = np.full((batch, n_scratch), voc["scratch"], np.int32)
  inputs = np.concatenate([perm_BxN, yp_BxN + voc["symbol0"], scratch], axis=1)
  targets = np.zeros((batch, t), np.int32)
  targets[:, t - n:] = y_BxN + voc["symbol0"]
  weights = np.zeros((batch, t), np.float32)
  weights[:, t - n:] = 1.0
  return {"inputs": inputs, "targets": targets, "weights": weights, "perm": perm_BxN}


def mask_for(variant: Variant, n: int, n_scratch: int, batch: int) -> np.ndarray:
  """bool[B, T, T] (True = may attend): causal and scratch are causal; unmasked is
  bidirectional; prefix is bidirectional over the input [P; Y_P] and causal after it."""
  t = seq_len(n, n_scratch)
  require(variant in ("causal", "unmasked", "prefix", "scratch"), "variant",
          "causal | unmasked | prefix | scratch", variant)
  if variant == "unmasked":
    return np.asarray(masks.bidirectional(t, batch))
  if variant == "prefix":
    return np.asarray(masks.prefix(t, jnp.full((batch,), 2 * n, jnp.int32)))
  return np.asarray(masks.causal(t, batch))


class PermutationSource(SeededSource):
  """grain source: example i is a pure function of (seed, i). ``kind="vector"`` yields the
  paper's rows (x, y, perm, read); ``kind="tokens"`` yields (inputs, targets, weights, perm)
  and, for ``variant="prefix"``, the example's ``mask`` bool[T, T]."""

  def __init__(self, n: int, seed: int, *, kind: Literal["vector", "tokens"] = "vector",
               n_scratch: int = 0, k: int = 2, variant: Variant = "causal",
               length: int = 2**31 - 1):
    super().__init__(seed, length)
    check_task(n, n_scratch)
    require(kind in ("vector", "tokens"), "kind", "vector | tokens", kind)
    self.n, self.kind, self.n_scratch, self.k, self.variant = n, kind, n_scratch, k, variant
    # Built once (validating the variant): per example it would be a JAX call per row.
    self.mask_TxT = mask_for(variant, n, n_scratch, 1)[0]

  def generate(self, rng):
    if self.kind == "vector":
      ex = vector_batch(rng, 1, self.n, n_scratch=self.n_scratch)
    else:
      ex = token_batch(rng, 1, self.n, self.k, n_scratch=self.n_scratch)
    ex = {name: v[0] for name, v in ex.items()}
    if self.kind == "vector" or self.variant in ("prefix", "unmasked"):
      ex["mask"] = self.mask_TxT
    return ex


def token_scores(logits_BxTxV, targets_BxT, weights_BxT) -> dict[str, jax.Array]:
  """Per answer token accuracy and cross-entropy (nats), and whole-answer exact match, over
  the rows ``weights`` selects (the n read rows of every example)."""
  w_BxT = weights_BxT.astype(jnp.float32)
  logp_BxTxV = jax.nn.log_softmax(logits_BxTxV.astype(jnp.float32), axis=-1)
  nll_BxT = -jnp.take_along_axis(logp_BxTxV, targets_BxT[..., None], axis=-1)[..., 0]
  hit_BxT = (jnp.argmax(logits_BxTxV, axis=-1) == targets_BxT).astype(jnp.float32)
  total = jnp.maximum(w_BxT.sum(), 1.0)
  all_hit_B = jnp.all((hit_BxT > 0) | (w_BxT == 0), axis=1)
  return {"accuracy": (hit_BxT * w_BxT).sum() / total,
          "cross_entropy": (nll_BxT * w_BxT).sum() / total,
          "exact_match": all_hit_B.astype(jnp.float32).mean()}


def token_loss(graphdef, params, batch: dict, key: jax.Array) -> tuple[jax.Array, LossAux]:
  """The default next-token loss (the same value as ``next_token_loss``; batch ``mask`` and
  ``positions`` as there) that also reports ``token_scores`` as metrics, so the trainer's
  evaluations give the answer-token error curve."""
  del key  # deterministic
  x = model_inputs(batch)
  logits_BxTxV = forward(graphdef, params, batch["inputs"], x["positions"], x["mask"]).logits
  nll_BxT = cross_entropy(logits_BxTxV, batch["targets"])
  w_BxT = batch["weights"].astype(jnp.float32)
  return weighted_mean(nll_BxT, w_BxT), LossAux(
      nll_BxT=nll_BxT, weights_BxT=w_BxT,
      metrics=token_scores(logits_BxTxV, batch["targets"], batch["weights"]))
