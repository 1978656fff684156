"""LZW dictionary learning over arbitrary symbol alphabets (arXiv 2404.08335, Sec. 4).

Welch's variant of LZ78: the dictionary starts as the alphabet; the training string is parsed
left to right into phrases, each the longest dictionary entry matching at the cursor, and every
phrase extended by its next symbol becomes a new entry, until the dictionary holds ``d`` tokens.
The paper's LZW tokenizer encodes with greedy longest-prefix matching over this dictionary
(``Vocabulary.encode(..., "greedy")``); its guarantee (``jaxtok.markov.lzw_bound``) is for the
best unigram model over those tokens.
"""
from __future__ import annotations

import numpy as np

from jaxtok.config import require
from jaxtok.tokenize.vocab_encode import (Vocabulary, as_symbols, check_training_data,
                                          training_alphabet)


def lzw_train(data, d: int, alphabet=None) -> Vocabulary:
  """The first ``d`` LZW dictionary entries learned from ``data`` (alphabet ids first).

  ``alphabet`` defaults to the distinct symbols of ``data``. If ``data`` runs out before ``d``
  entries are made, the smaller dictionary is returned (``len(vocab)`` says its size).
  """
  seq = as_symbols(data)
  check_training_data(seq)
  alpha = training_alphabet(seq, alphabet)
  require(isinstance(d, (int, np.integer)) and d >= len(alpha), "d",
          f"a dictionary size >= the alphabet size {len(alpha)}", d)
  tokens: list[tuple[int, ...]] = [(a,) for a in alpha]
  # Trie of entries: node = dict symbol -> child; each node's id under key None.
  root: dict = {}
  for i, (a,) in enumerate(tokens):
    root[a] = {None: i}
  symbols, n, i = seq.tolist(), len(seq), 0
  while i < n and len(tokens) < d:
    node, phrase_end = root[symbols[i]], i + 1
    while phrase_end < n and symbols[phrase_end] in node:
      node = node[symbols[phrase_end]]
      phrase_end += 1
    if phrase_end == n:
      break  # the last phrase has no next symbol to extend it with
    new = tokens[node[None]] + (symbols[phrase_end],)
    node[symbols[phrase_end]] = {None: len(tokens)}
    tokens.append(new)
    i = phrase_end
  return Vocabulary(tokens, kind="lzw")
