"""Lexinvariant language models (Huang et al., "Lexinvariant Language Models", arXiv 2305.16349).

A model p is lexinvariant if p(x_1..x_n) = p(pi(x_1)..pi(x_n)) for every permutation pi of the
vocabulary (the paper's Definition). The construction (paper Sec. 3): every *sequence* draws a
fresh Gaussian table G in R^{V x D}; token v is embedded as G[v] everywhere in that sequence and
the logits are tied to the same table, logits_t = h_t . G^T. Since G and G[pi^-1] have the same
law, the expected model is invariant; for one fixed table the model is *equivariant*:
``logits(pi(x), G[pi^-1])[..., pi(v)] == logits(x, G)[..., v]``.

The tables are drawn inside the loss from the train step's key (``jaxtok.train.losses`` seam):
sequence b's key is ``fold_in(step_key, index_b)`` with ``index_b`` the example's index in its
source (carried by the batch as ``index`` i32[B, 1]), so shuffling the data within a step never
changes which table an example gets. Row v of a sequence's table is ``normal(fold_in(seq_key, v))``:
the dense path builds all V rows; the memory-lean path (large V) generates only the rows it needs
and scores the tied softmax in vocabulary chunks with a streaming log-sum-exp -- the same numbers.

Semi-lexinvariant regulariser (paper Sec. 6): each token type of a sequence uses its random row
with probability p, else the learned row (the model's ``unembed`` columns, tied in and out).

This module: the (semi-)lexinvariant loss for the one train step and its data helpers; the
tables are in ``jaxtok.lexinvariant.tables``, the exact Bayes reference in ``.bayes``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxtok.config import require
from jaxtok.data.pipeline import to_lm_example
from jaxtok.lexinvariant.tables import (chunked_tied_cross_entropy, embed, lean_embed,
                                        sequence_keys, sequence_tables, tied_logits)
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import default_positions, forward
from jaxtok.train.losses import LossAux, LossFn, cross_entropy, weighted_mean


# --------------------------------------------------------------------------- the model and loss
def model_config(vocab_size: int, seq_len: int, *, lexinvariant: bool, **dims) -> ModelConfig:
  """The Transformer config of a standard (learned embeddings) or (semi-)lexinvariant LM
  (external embeddings from the loss's tables, untied ``unembed`` = the semi-lex learned rows);
  ``dims``: d_model, n_layers, n_heads, d_ff."""
  kw = dict(vocab_size=vocab_size, max_len=seq_len, **dims)
  if lexinvariant:
    return ModelConfig(**kw, embedding="external", tie_embeddings=False)
  return ModelConfig(**kw)


def check_config(cfg: ModelConfig) -> None:
  require(cfg.embedding == "external", "model.embedding",
          "'external' for a lexinvariant model (the tables come from the loss)", cfg.embedding)


def forward_with_table(graphdef, params, tokens_BxT, table_BxVxD, positions=None, mask=None):
  """(logits tied to ``table_BxVxD`` [B, T, V], hidden [B, T, D]) for one fixed table per
  sequence: the deterministic core the equivariance test checks."""
  b, t = tokens_BxT.shape
  positions = default_positions(b, t) if positions is None else positions
  out = forward(graphdef, params, tokens_BxT, positions, mask,
                embeddings_BxTxD=embed(table_BxVxD, tokens_BxT), return_hidden=True)
  return tied_logits(out.hidden, table_BxVxD), out.hidden


def _batch_keys(batch: dict, key: jax.Array) -> jax.Array:
  if "index" not in batch:
    raise ValueError("batch: a lexinvariant loss needs 'index' i32[B, 1] (each example's "
                     "source index); build rows with to_indexed_lm_example")
  return sequence_keys(key, batch["index"])


def _positions(batch: dict):
  b, t = batch["inputs"].shape
  return batch["positions"] if "positions" in batch else default_positions(b, t)


def sequence_logits(cfg: ModelConfig, graphdef, params, batch: dict, key: jax.Array, *,
                    scale: float = 1.0, p: float = 1.0):
  """(logits [B, T, V], hidden [B, T, D]) of the (semi-)lexinvariant LM on ``batch`` with the
  tables drawn from ``key`` and the batch's ``index`` -- exactly what its loss scores (the dense
  path); ``p < 1`` mixes in the learned rows (the ``unembed`` columns)."""
  check_config(cfg)
  seq_keys_B = _batch_keys(batch, key)
  learned_VxD = params["unembed"][...].T if p < 1.0 else None
  table_BxVxD = sequence_tables(seq_keys_B, cfg.vocab_size, cfg.d_model, scale=scale,
                                learned_VxD=learned_VxD, p=p)
  return forward_with_table(graphdef, params, batch["inputs"], table_BxVxD, _positions(batch),
                            batch.get("mask"))


def lexinvariant_loss(cfg: ModelConfig, *, scale: float = 1.0, p: float = 1.0,
                      chunk: int = 0) -> LossFn:
  """The LossFn of a lexinvariant (``p=1``) or semi-lexinvariant (``p<1``) LM.

  batch: ``inputs``, ``targets`` i32[B, T], ``weights`` f32[B, T], ``index`` i32[B, 1] (the
  example's source index, see ``to_indexed_lm_example``). ``chunk > 0``: the memory-lean path.
  The semi-lexinvariant learned rows are the model's ``unembed`` columns (cfg.tie_embeddings is
  False for external embeddings, so that matrix exists and is otherwise unused).
  """
  check_config(cfg)
  require(scale > 0, "scale", "> 0", scale)
  require(0.0 <= p <= 1.0, "p", "a probability in [0, 1]", p)
  require(chunk >= 0, "chunk", ">= 0 (0: dense tables)", chunk)
  v, d = cfg.vocab_size, cfg.d_model

  def loss_fn(graphdef, params, batch, key):
    tokens_BxT = batch["inputs"]
    if chunk:
      seq_keys_B = _batch_keys(batch, key)
      learned_VxD = params["unembed"][...].T if p < 1.0 else None
      kw = dict(scale=scale, learned_VxD=learned_VxD, p=p)
      emb_BxTxD = lean_embed(seq_keys_B, tokens_BxT, d, **kw)
      out = forward(graphdef, params, tokens_BxT, _positions(batch), batch.get("mask"),
                    embeddings_BxTxD=emb_BxTxD, return_hidden=True)
      nll_BxT = chunked_tied_cross_entropy(out.hidden, seq_keys_B, batch["targets"], v,
                                           chunk=chunk, **kw)
    else:
      logits_BxTxV, _ = sequence_logits(cfg, graphdef, params, batch, key, scale=scale, p=p)
      nll_BxT = cross_entropy(logits_BxTxV, batch["targets"])
    w_BxT = batch["weights"].astype(jnp.float32)
    return weighted_mean(nll_BxT, w_BxT), LossAux(nll_BxT=nll_BxT, weights_BxT=w_BxT)

  return loss_fn


# --------------------------------------------------------------------------- data helpers
class Indexed:
  """A source whose examples also carry their own index (the per-sequence table's seed)."""

  def __init__(self, source):
    self.source = source

  def __len__(self) -> int:
    return len(self.source)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    return {**self.source[index], "index": np.asarray([index], np.int32)}


def to_indexed_lm_example(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """``to_lm_example`` plus the example's ``index`` [1] (from ``Indexed``)."""
  if "index" not in example:
    raise ValueError("example: missing 'index'; wrap the source in jaxtok.lexinvariant.Indexed")
  return {**to_lm_example(example), "index": np.asarray(example["index"], np.int32).reshape(1)}
