"""LZW, symbol BPE and vocabulary-only encodings over arbitrary alphabets.

Properties (hypothesis): decode(encode(s)) == s for every tokenizer and encoding on random
strings over random alphabets; the vocabulary-only encodings (arXiv 2508.06621) emit only
vocabulary ids and the minimum-token-count DP never uses more tokens than greedy.
"""
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from jaxtok.config import ConfigError
from jaxtok.tokenize.lzw import lzw_train
from jaxtok.tokenize.symbol_bpe import BPE, bpe_train
from jaxtok.tokenize.unigram import chars_per_token, per_char_cross_entropy, unigram_fit
from jaxtok.tokenize.vocab_encode import Vocabulary, block_vocabulary


@st.composite
def alphabet_and_strings(draw):
  alphabet = draw(st.lists(st.integers(0, 10_000), min_size=2, max_size=6, unique=True))
  sym = st.sampled_from(alphabet)
  train = draw(st.lists(sym, min_size=2, max_size=200).filter(lambda s: len(set(s)) >= 2))
  test = draw(st.lists(sym, min_size=0, max_size=200))
  d = draw(st.integers(len(alphabet), len(alphabet) + 40))
  return alphabet, train, test, d


PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@PROPS
@given(alphabet_and_strings())
def test_roundtrip_every_tokenizer(case):
  alphabet, train, test, d = case
  lzw = lzw_train(train, d, alphabet=alphabet)
  bpe = bpe_train(train, d, alphabet=alphabet)
  block = block_vocabulary(alphabet, 2)
  for s in (train, test):
    assert bpe.decode(bpe.encode(s)).tolist() == s
    for vocab in (lzw, bpe.vocab, block):
      for method in ("greedy", "min_count"):
        ids = vocab.encode(s, method)
        assert vocab.decode(ids).tolist() == s


@PROPS
@given(alphabet_and_strings())
def test_vocab_only_encodings_use_vocab_and_min_count_is_minimal(case):
  alphabet, train, test, d = case
  for vocab in (lzw_train(train, d, alphabet=alphabet), bpe_train(train, d, alphabet).vocab):
    for s in (train, test):
      greedy, best = vocab.encode(s, "greedy"), vocab.encode(s, "min_count")
      assert all(0 <= i < len(vocab) for i in np.concatenate([greedy, best]))
      assert len(best) <= len(greedy)


def _brute_min_count(s, tokens):
  best = [0] + [None] * len(s)
  for j in range(1, len(s) + 1):
    cands = [best[j - len(t)] + 1 for t in tokens if len(t) <= j and best[j - len(t)] is not None
             and tuple(s[j - len(t):j]) == t]
    best[j] = min(cands) if cands else None
  return best[-1]


def test_min_count_matches_brute_force_and_can_beat_greedy():
  vocab = Vocabulary([(0,), (1,), (2,), (0, 1), (1, 2, 2), (2, 2, 0, 1)])
  s = [0, 1, 2, 2]  # greedy takes 01, then 2, 2 (3 tokens); the DP finds 0|122 (2)
  assert vocab.encode(s, "greedy").tolist() == [3, 2, 2]
  assert vocab.encode(s, "min_count").tolist() == [0, 4]
  rng = np.random.default_rng(0)
  for _ in range(100):
    s = rng.integers(0, 3, rng.integers(1, 30)).tolist()
    assert len(vocab.encode(s, "min_count")) == _brute_min_count(s, vocab.tokens)


def _naive_bpe(seq, d):
  alpha = sorted(set(seq))
  ids, merges = [alpha.index(s) for s in seq], []
  while len(alpha) + len(merges) < d:
    counts = Counter(zip(ids, ids[1:]))
    if not counts or max(counts.values()) < 2:
      break
    top = max(counts.values())
    pair = min(p for p, c in counts.items() if c == top)
    new, out, i = len(alpha) + len(merges), [], 0
    while i < len(ids):
      if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
        out.append(new)
        i += 2
      else:
        out.append(ids[i])
        i += 1
    ids = out
    merges.append(pair)
  return merges, ids


def _apply_merges(ids, merges, n_alpha):
  for r, pair in enumerate(merges):
    out, i = [], 0
    while i < len(ids):
      if i + 1 < len(ids) and (ids[i], ids[i + 1]) == pair:
        out.append(n_alpha + r)
        i += 2
      else:
        out.append(ids[i])
        i += 1
    ids = out
  return ids


def test_bpe_matches_naive_recount_and_sequential_merges():
  rng = np.random.default_rng(1)
  for _ in range(60):
    a = int(rng.integers(2, 5))
    seq = rng.integers(0, a, int(rng.integers(2, 120))).tolist()
    if len(set(seq)) < 2:
      continue
    d = int(rng.integers(len(set(seq)), 40))
    merges, ids = _naive_bpe(seq, d)
    bpe = bpe_train(seq, d)
    assert bpe.merges == merges
    assert bpe.encode(seq).tolist() == ids
    # Unseen text: the heap-ordered encoder equals applying the merges one after another.
    alpha = sorted(set(seq))
    other = rng.choice(alpha, int(rng.integers(0, 120))).tolist()
    expected = _apply_merges([alpha.index(s) for s in other], merges, len(alpha))
    assert bpe.encode(other).tolist() == expected


def test_lzw_dictionary_is_welch_parse():
  # "abababa": phrases a|b|ab|aba -> entries ab, ba, aba (LZW adds phrase + next symbol).
  vocab = lzw_train([0, 1, 0, 1, 0, 1, 0], 10)
  assert vocab.tokens == [(0,), (1,), (0, 1), (1, 0), (0, 1, 0)]
  assert vocab.encode([0, 1, 0, 1, 0]).tolist() == [4, 3]  # greedy: 010 | 10


def test_save_load_roundtrip(tmp_path):
  seq = np.random.default_rng(2).integers(0, 3, 500)
  bpe, lzw = bpe_train(seq, 30), lzw_train(seq, 30)
  bpe.save(tmp_path / "bpe.json")
  lzw.save(tmp_path / "lzw.json")
  bpe2, lzw2 = BPE.load(tmp_path / "bpe.json"), Vocabulary.load(tmp_path / "lzw.json")
  assert bpe2.merges == bpe.merges and bpe2.encode(seq).tolist() == bpe.encode(seq).tolist()
  assert lzw2.tokens == lzw.tokens and lzw2.kind == "lzw"
  (tmp_path / "bad.json").write_text("{not json")
  with pytest.raises(ValueError, match="bad.json"):
    Vocabulary.load(tmp_path / "bad.json")


def test_unigram_per_char_and_chars_per_token():
  logq = unigram_fit(np.array([0, 0, 1]), 3, alpha=0.5)
  assert np.exp(logq).sum() == pytest.approx(1.0)
  assert np.exp(logq).tolist() == pytest.approx([2.5 / 4.5, 1.5 / 4.5, 0.5 / 4.5])
  ids = np.array([0, 1])
  assert per_char_cross_entropy(logq, ids, 4) == pytest.approx(-(logq[0] + logq[1]) / 4)
  assert chars_per_token(ids, 4) == 2.0


@pytest.mark.parametrize("call,field", [
    (lambda: lzw_train([0, 1, 2, 0], 2), "d"),
    (lambda: bpe_train([0, 1, 2, 0], 2), "d"),
    (lambda: lzw_train([], 4), "data"),
    (lambda: bpe_train([1, 1, 1], 4), "data"),
    (lambda: lzw_train([3], 4), "data"),
    (lambda: block_vocabulary([0, 1], 0), "r"),
    (lambda: lzw_train([0, 1, 0], 4).encode([0, 5]), "data"),
    (lambda: bpe_train([0, 1, 0, 1], 4).encode([2]), "data"),
    (lambda: lzw_train([0, 1, 0], 4).decode([7]), "ids"),
    (lambda: unigram_fit(np.array([0, 3]), 2), "ids"),
])
def test_bad_input_names_the_argument(call, field):
  with pytest.raises(ConfigError, match=rf"^{field}:"):
    call()
