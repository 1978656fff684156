"""Perplexity and bits per byte of a pretrained model on raw text.

Bits per byte (total negative log-likelihood in bits / UTF-8 bytes of the text) compares models
with different tokenizers, unlike per-token perplexity (as in Gao et al., The Pile, arXiv
2101.00027 §4). Each document is prefixed with a separator token (SmolLM2: ``<|endoftext|>``) so
that every document token, the first included, is predicted; documents are cut into
non-overlapping windows of ``window`` tokens (context resets at each window).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import zlib
from collections import Counter
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TextScore:
  nll_nats: float
  n_tokens: int
  n_bytes: int

  @property
  def bits_per_byte(self) -> float:
    return self.nll_nats / math.log(2) / max(self.n_bytes, 1)

  @property
  def token_perplexity(self) -> float:
    return math.exp(self.nll_nats / max(self.n_tokens, 1))

  @property
  def bytes_per_token(self) -> float:
    return self.n_bytes / max(self.n_tokens, 1)


def _windows(docs_ids: Sequence[Sequence[int]], sep_id: int, window: int):
  inputs, targets, weights = [], [], []
  for ids in docs_ids:
    seq = np.asarray([sep_id, *ids], np.int32)
    for start in range(0, len(seq) - 1, window):
      chunk = seq[start:start + window + 1]
      x = np.zeros(window, np.int32)
      y = np.zeros(window, np.int32)
      w = np.zeros(window, np.float32)
      n = len(chunk) - 1
      x[:n], y[:n], w[:n] = chunk[:-1], chunk[1:], 1.0
      inputs.append(x)
      targets.append(y)
      weights.append(w)
  return np.stack(inputs), np.stack(targets), np.stack(weights)


def _nll(model, x_BxT, y_BxT, w_BxT):
  import jax.numpy as jnp

  from jaxtok.train.losses import next_token_loss
  _, aux = next_token_loss(model.graphdef, model.params, {"inputs": x_BxT, "targets": y_BxT,
                                                          "weights": w_BxT}, None)
  return jnp.sum(aux.nll_BxT * aux.weights_BxT)


@functools.cache
def _nll_jit():
  import jax  # jitted on first use: no JAX call at import time
  return jax.jit(_nll)


def score_texts(model, texts: Sequence[str], *, tokenizer=None, window: int = 512,
                batch: int = 4, sep_id: int | None = None) -> TextScore:
  """Total NLL of ``texts`` under ``model`` (a ``jaxtok.decode.Model``; windows batched, one
  compile per model definition and shape). ``tokenizer``: default the model's own."""
  if window <= 0 or batch <= 0:
    raise ValueError(f"window and batch must be positive, got window={window}, batch={batch}")
  tokenizer = model.tokenizer if tokenizer is None else tokenizer
  if tokenizer is None:
    raise ValueError("tokenizer: the model carries none (a pretrained model from "
                     "jaxtok.models.load does); pass tokenizer=")
  if sep_id is None:
    sep_id = tokenizer.tokenizer.token_to_id("<|endoftext|>")  # may be 0: test for None
  if sep_id is None:
    sep_id = tokenizer.bos_id if tokenizer.bos_id is not None else 0
  sep = sep_id
  docs = [tokenizer.encode(t) for t in texts]
  x, y, w = _windows(docs, sep, window)
  pad = -len(x) % batch
  if pad:
    x, y, w = (np.concatenate([a, np.zeros((pad, window), a.dtype)]) for a in (x, y, w))
  fn = _nll_jit()
  total = 0.0
  for i in range(0, len(x), batch):
    total += float(fn(model, x[i:i + batch], y[i:i + batch], w[i:i + batch]))
  return TextScore(nll_nats=total, n_tokens=int(w.sum()),
                   n_bytes=sum(len(t.encode("utf-8")) for t in texts))


def unigram_bits_per_byte(texts: Sequence[str]) -> float:
  """Entropy of the empirical byte distribution of ``texts`` (fit on the same bytes: optimistic)."""
  counts = Counter(b"".join(t.encode("utf-8") for t in texts))
  n = sum(counts.values())
  return -sum(c / n * math.log2(c / n) for c in counts.values())


def zlib_bits_per_byte(texts: Sequence[str]) -> float:
  """DEFLATE level 9 on each text: a compressor that sees the whole text, no training data."""
  raw = [t.encode("utf-8") for t in texts]
  return 8 * sum(len(zlib.compress(r, 9)) for r in raw) / max(sum(map(len, raw)), 1)
