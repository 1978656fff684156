import numpy as np
import pytest

from jaxtok.data import ngram, stdlib
from jaxtok.data.pipeline import check_token_range, fixed_batches, lm_batches
from jaxtok.data.sources import MarkovChainSource, TokenWindows


def test_seeded_source_is_a_pure_function_of_index_and_seed():
  a = MarkovChainSource(vocab_size=5, seq_len=20, seed=1)
  b = MarkovChainSource(vocab_size=5, seq_len=20, seed=1)
  np.testing.assert_array_equal(a[17]["tokens"], b[17]["tokens"])
  assert not np.array_equal(a[17]["tokens"], a[18]["tokens"])
  assert not np.array_equal(a[17]["tokens"], MarkovChainSource(5, 20, seed=2)[17]["tokens"])
  with pytest.raises(IndexError):
    a[-1]


def test_markov_source_follows_its_transition_matrix():
  src = MarkovChainSource(vocab_size=3, seq_len=2000, seed=0)
  t = src[0]["tokens"]
  counts = np.zeros((3, 3))
  np.add.at(counts, (t[:-1], t[1:]), 1)
  np.testing.assert_allclose(counts / counts.sum(1, keepdims=True), src.transition_VxV, atol=0.06)


def test_batches_are_deterministic_and_resumable():
  src = TokenWindows(np.arange(10_000) % 256, seq_len=16)
  ds = lm_batches(src, 4, seed=3)
  it = iter(ds.to_iter_dataset())
  first = [next(it) for _ in range(5)]
  state = it.get_state()
  after = [next(it) for _ in range(3)]
  again = iter(lm_batches(src, 4, seed=3).to_iter_dataset())
  again.set_state(state)
  for x, y in zip(after, [next(again) for _ in range(3)]):
    np.testing.assert_array_equal(x["inputs"], y["inputs"])
  np.testing.assert_array_equal(first[0]["targets"][:, :-1], first[0]["inputs"][:, 1:])
  other = next(iter(lm_batches(src, 4, seed=4).to_iter_dataset()))
  assert not np.array_equal(other["inputs"], first[0]["inputs"])


def test_process_shards_partition_the_global_batch():
  src = TokenWindows(np.arange(4_000) % 256, seq_len=8)
  shards = [lm_batches(src, 4, seed=0, process_index=i, process_count=2)[0]["inputs"]
            for i in range(2)]
  full = lm_batches(src, 4, seed=0)[0]["inputs"]
  assert sorted(map(tuple, np.concatenate(shards))) == sorted(map(tuple, full))


def test_token_range_is_checked():
  with pytest.raises(ValueError, match="vocab_size=10"):
    check_token_range(np.array([1, 2, 10]), 10)


def test_fixed_batches_and_too_short_sources():
  assert len(fixed_batches(TokenWindows(np.zeros(1000, np.int32), 9), 4, 100)) == 27
  with pytest.raises(ValueError, match="seq_len"):
    TokenWindows(np.zeros(5, np.int32), 8)


def test_stdlib_split_is_stable_and_disjoint():
  train, val = stdlib.files("train"), stdlib.files("val")
  assert len(train) > 100 and len(val) > 5
  assert not set(train) & set(val)
  assert stdlib.split_of("json/decoder.py", 0.05) == stdlib.split_of("json/decoder.py", 0.05)
  tokens = stdlib.byte_tokens("val", max_bytes=10_000)
  assert tokens.dtype == np.uint8 and len(tokens) >= 10_000


def test_ngram_baselines_on_a_deterministic_chain():
  seq = np.tile(np.array([0, 1, 2, 3]), 500)
  assert ngram.entropy_bits(seq, 4) == pytest.approx(2.0)
  assert ngram.unigram_bits(seq, seq, 4) == pytest.approx(2.0, abs=1e-2)
  assert ngram.bigram_bits(seq, seq[:-1], seq[1:], 4) < 0.01
