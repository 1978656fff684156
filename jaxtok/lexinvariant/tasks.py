"""Synthetic in-context symbol tasks for lexinvariant LMs (Huang et al., arXiv 2305.16349, Sec. 5:
"in-context reasoning over symbols", the LookUp task).

``KeyValueLookupSource``: each example lists ``n_pairs`` key, value pairs and then ``n_queries``
query keys, each followed by its value::

    k_1 v_1 k_2 v_2 ... k_n v_n  q_1 a_1 ... q_m a_m        (a_j = the value paired with q_j)

All 2n symbols of an example are distinct and drawn from the source's symbol pool, the queries are
distinct keys, and only the answers are scored (``weights`` is 1 at the next-token targets a_j).
Nothing but the context says which value belongs to a key, so the task is pure in-context lookup
(an induction head). Train on one pool and test on a disjoint pool: a standard LM's embeddings of
the held-out ids were never trained, while a lexinvariant LM treats every id alike -- its
accuracy on unseen symbols equals its accuracy on seen ones in distribution.
"""
from __future__ import annotations

import functools

import jax
import numpy as np

from jaxtok.config import require
from jaxtok.data.sources import SeededSource
from jaxtok.decode.model import Model
from jaxtok.lexinvariant.loss import sequence_logits
from jaxtok.nn.transformer import default_positions, forward


def symbol_split(vocab_size: int, n_heldout: int) -> tuple[np.ndarray, np.ndarray]:
  """(training pool ids [0, V - n_heldout), held-out pool ids [V - n_heldout, V))."""
  require(0 < n_heldout < vocab_size, "n_heldout", f"in (0, vocab_size={vocab_size})",
          n_heldout)
  ids = np.arange(vocab_size, dtype=np.int32)
  return ids[:vocab_size - n_heldout], ids[vocab_size - n_heldout:]


class KeyValueLookupSource(SeededSource):
  """Seeded key -> value lookup sequences over ``symbols`` (example i = f(seed, i))."""

  def __init__(self, symbols, n_pairs: int, n_queries: int, seed: int,
               length: int = 2**31 - 1):
    super().__init__(seed, length)
    self.symbols = np.unique(np.asarray(symbols, np.int32))
    require(self.symbols.ndim == 1 and len(self.symbols) == np.asarray(symbols).size,
            "symbols", "distinct integer ids", symbols)
    require(n_pairs >= 1, "n_pairs", "a positive integer", n_pairs)
    require(2 * n_pairs <= len(self.symbols), "n_pairs",
            f"<= len(symbols) / 2 = {len(self.symbols) // 2} (all 2n symbols are distinct)",
            n_pairs)
    require(1 <= n_queries <= n_pairs, "n_queries", f"in [1, n_pairs={n_pairs}]", n_queries)
    self.n_pairs, self.n_queries = n_pairs, n_queries

  @property
  def seq_len(self) -> int:
    """Next-token positions per example (inputs/targets length)."""
    return 2 * (self.n_pairs + self.n_queries) - 1

  def answer_positions(self) -> np.ndarray:
    """Target positions t (target = tokens[t + 1]) that hold an answer."""
    return 2 * self.n_pairs + 2 * np.arange(self.n_queries)

  def generate(self, rng):
    n, m = self.n_pairs, self.n_queries
    drawn = rng.choice(self.symbols, 2 * n, replace=False)
    keys, values = drawn[:n], drawn[n:]
    asked = rng.choice(n, m, replace=False)
    tokens = np.empty(2 * (n + m), np.int32)
    tokens[0:2 * n:2], tokens[1:2 * n:2] = keys, values
    tokens[2 * n::2], tokens[2 * n + 1::2] = keys[asked], values[asked]
    weights = np.zeros(self.seq_len, np.float32)
    weights[self.answer_positions()] = 1.0
    return {"tokens": tokens, "weights": weights}


def answer_accuracy(logits_BxTxV, targets_BxT, weights_BxT) -> float:
  """Fraction of scored targets (weight > 0) that are the argmax over the whole vocabulary."""
  logits_BxTxV, targets_BxT = np.asarray(logits_BxTxV), np.asarray(targets_BxT)
  scored_BxT = np.asarray(weights_BxT) > 0
  require(scored_BxT.any(), "weights_BxT", "at least one scored target", 0)
  hit_BxT = np.argmax(logits_BxTxV, -1) == targets_BxT
  return float(hit_BxT[scored_BxT].mean())


@functools.partial(jax.jit, static_argnames=("scale", "p"))
def model_logits(model: Model, batch: dict, key: jax.Array, *, scale: float = 1.0,
                 p: float | None = None) -> jax.Array:
  """A trained LM's logits [B, T, V] on ``batch``: ``p=None`` a standard LM; else the
  (semi-)lexinvariant LM with tables drawn from ``key`` and the batch's ``index``, as in its
  loss (``p=0``: the semi-lexinvariant LM's learned rows alone)."""
  if p is None:
    return forward(model.graphdef, model.params, batch["inputs"],
                   default_positions(*batch["inputs"].shape)).logits
  return sequence_logits(model.cfg, model.graphdef, model.params, batch, key, scale=scale,
                         p=p)[0]


def lookup_accuracy(model: Model, batches: list[dict], *, scale: float = 1.0,
                    p: float | None = None) -> float:
  """Mean answer accuracy of ``model`` (see ``model_logits``) over equal lookup ``batches``;
  batch i draws its tables from ``PRNGKey(1000 + i)``."""
  require(len(batches) > 0, "batches", "at least one batch", 0)
  hits = [answer_accuracy(model_logits(model, b, jax.random.PRNGKey(1000 + i), scale=scale, p=p),
                          b["targets"], b["weights"]) for i, b in enumerate(batches)]
  return float(np.mean(hits))  # equal batches, equal answers per batch
