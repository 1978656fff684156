"""Byte-level BPE trained on the stdlib code corpus with Hugging Face ``tokenizers``, cached.

Sennrich et al. (arXiv 1508.07909) merges over bytes (GPT-2 style), so every byte string is
encodable and decoding is exact. The trained tokenizer is stored as JSON in the jaxtok cache
keyed by vocabulary size and split fraction; the encoded corpus is cached as ``.npy``.
Id 0 is ``<|doc|>``, the document separator.
"""
from __future__ import annotations

import sys

import numpy as np

from jaxtok.data import stdlib

DOC = "<|doc|>"


def _require_tokenizers():
  try:
    import tokenizers
  except ImportError:
    raise ImportError("BPE needs HF tokenizers: pip install 'jaxtok[hf]'") from None
  return tokenizers


def train(vocab_size: int, val_fraction: float = 0.05, max_bytes: int = 0):
  """Returns a ``tokenizers.Tokenizer`` trained on the train split (cached as JSON)."""
  if vocab_size < 257 + 1:
    raise ValueError(f"vocab_size: byte-level BPE needs > 257 entries (256 bytes + <|doc|>), "
                     f"got {vocab_size}")
  tokenizers = _require_tokenizers()
  path = stdlib.cache_dir() / f"bpe-{vocab_size}-{val_fraction}-{max_bytes}.json"
  if path.exists():
    return tokenizers.Tokenizer.from_file(str(path))
  bpe = tokenizers.ByteLevelBPETokenizer()
  docs = [d.decode("utf-8", "replace") for d in stdlib.documents("train", val_fraction, max_bytes)]
  bpe.train_from_iterator(docs, vocab_size=vocab_size, min_frequency=2, special_tokens=[DOC],
                          show_progress=False)
  tmp = path.with_suffix(".tmp")
  bpe.save(str(tmp))
  tmp.replace(path)
  return tokenizers.Tokenizer.from_file(str(path))


def tokens(split: str, vocab_size: int, val_fraction: float = 0.05, max_bytes: int = 0
           ) -> tuple[np.ndarray, int]:
  """(token stream with <|doc|> separators, number of UTF-8 bytes it encodes), cached."""
  key = (f"stdlib-bpe{vocab_size}-py{sys.version_info.major}{sys.version_info.minor}-{split}-"
         f"{val_fraction}-{max_bytes}")
  path = stdlib.cache_dir() / f"{key}.npz"
  if path.exists():
    data = np.load(path)
    return data["tokens"], int(data["n_bytes"])
  tok = train(vocab_size, val_fraction)
  doc_id = tok.token_to_id(DOC)
  texts = [d.decode("utf-8", "replace") for d in stdlib.documents(split, val_fraction, max_bytes)]
  pieces = []
  for enc in tok.encode_batch(texts):
    pieces += [enc.ids, [doc_id]]
  stream = np.concatenate([np.asarray(p, np.int32) for p in pieces])
  n_bytes = sum(len(t.encode("utf-8")) for t in texts) + len(texts)  # separators count 1 byte
  tmp = path.with_suffix(".tmp.npz")
  np.savez(tmp, tokens=stream, n_bytes=n_bytes)
  tmp.replace(path)
  return stream, n_bytes
