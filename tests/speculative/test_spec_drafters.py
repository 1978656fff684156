"""Drafters: Token Recycling's update is deterministic under duplicate tokens; suffix-trie
counts equal brute-force counts; the suffix draft's score equals a brute-force expectation;
replaying requests raises SuffixDecoding's acceptance; trees and templates are well formed."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok.speculative import (DeviceDrafter, HostDrafter, PromptLookup, TokenRecycling,
                                ancestor_mask, check_drafter, make_drafter, make_tree, template)
from jaxtok.speculative.lookup import HostPromptLookup
from jaxtok.speculative.loop import Context
from jaxtok.speculative.recycling import update, update_sequential
from jaxtok.speculative.suffix import SuffixDecoding, SuffixTrie, expand


def test_recycling_update_is_deterministic_under_duplicates():
  rng = np.random.default_rng(0)
  v, k, b, n = 6, 3, 2, 10
  adj = jnp.asarray(rng.integers(0, v, (v, k)), jnp.int32)
  for trial in range(5):
    tokens = jnp.asarray(rng.integers(0, 3, (b, n)), jnp.int32)  # many duplicates
    logits = jnp.asarray(rng.normal(size=(b, n, v)), jnp.float32)
    valid = jnp.asarray(rng.random((b, n)) < 0.8)
    prio = jnp.asarray(rng.integers(0, 3, (b, n)), jnp.int32)
    got = np.asarray(jax.jit(update)(adj, tokens, logits, valid, prio))
    np.testing.assert_array_equal(got, update_sequential(adj, tokens, logits, valid, prio))
    untouched = np.setdiff1d(np.arange(v), np.asarray(tokens)[np.asarray(valid)])
    np.testing.assert_array_equal(got[untouched], np.asarray(adj)[untouched])


def test_recycling_draft_follows_the_template():
  tr = TokenRecycling(n_nodes=16, k=4)
  rng = np.random.default_rng(1)
  state = tr.init(20).replace(adj_VxK=jnp.asarray(rng.integers(0, 20, (20, 4)), jnp.int32))
  tree = tr.propose(state, None, jnp.array([3, 7]))
  t = tr.tmpl
  tok = np.asarray(tree.tokens_BxN)
  adj = np.asarray(state.adj_VxK)
  for i in range(1, t.n_nodes):
    np.testing.assert_array_equal(tok[:, i], adj[tok[:, t.parent_N[i]], t.rank_N[i]])
  np.testing.assert_array_equal(tok[:, 0], [3, 7])


def test_templates_are_trees_in_bfs_order():
  for n in (1, 8, 16, 32, 80):
    t = template(n, k=8)
    assert t.n_nodes == n
    assert np.all(t.parent_N[1:] < np.arange(1, n)) and t.parent_N[0] == 0
    assert np.all(np.diff(t.depth_N) >= 0)
    assert np.all(t.depth_N[1:] == t.depth_N[t.parent_N[1:]] + 1)
    siblings = {(p, r) for p, r in zip(t.parent_N[1:], t.rank_N[1:])}
    assert len(siblings) == n - 1  # no two nodes take the same candidate of one parent


def test_ancestor_mask_and_depths_of_a_hand_built_tree():
  tree = make_tree(np.zeros((1, 6)), np.array([[0, 0, 0, 1, 3, 2]]))
  np.testing.assert_array_equal(tree.depth_BxN[0], [0, 1, 1, 2, 3, 2])
  m = np.asarray(ancestor_mask(tree))[0]
  expect = np.zeros((6, 6), bool)
  for i, anc in enumerate([[0], [0, 1], [0, 2], [0, 1, 3], [0, 1, 3, 4], [0, 2, 5]]):
    expect[i, anc] = True
  np.testing.assert_array_equal(m, expect)


def test_prompt_lookup_drafts_the_leftmost_continuation():
  pl = PromptLookup(n_nodes=4, max_ngram=2)
  ctx = np.zeros((2, 16), np.int32)
  ctx[0, :9] = [5, 1, 2, 7, 1, 2, 8, 3, 1]  # last token 1: bigram (3, 1) absent, unigram 1
  ctx[1, :4] = [4, 9, 9, 6]  # 6 never seen before: no draft
  tree = pl.propose((), Context(tokens_BxC=jnp.asarray(ctx), len_B=jnp.array([9, 4])),
                    jnp.array([1, 6]))
  np.testing.assert_array_equal(tree.tokens_BxN[0], [1, 2, 7, 1])
  np.testing.assert_array_equal(tree.valid_BxN[1], [True, False, False, False])
  host = HostPromptLookup(n_nodes=4, max_ngram=2)
  host.begin([list(ctx[0, :9]), list(ctx[1, :4])])
  h = host.propose_host()
  np.testing.assert_array_equal(h.valid_BxN, tree.valid_BxN)
  np.testing.assert_array_equal(np.where(h.valid_BxN, h.tokens_BxN, -1),
                                np.where(tree.valid_BxN, tree.tokens_BxN, -1))


def _brute_count(seqs, pattern, depth):
  if len(pattern) > depth:
    return 0
  n = len(pattern)
  return sum(1 for s in seqs for i in range(len(s) - n + 1) if s[i:i + n] == pattern)


def test_suffix_trie_counts_equal_brute_force_counts():
  rng = np.random.default_rng(2)
  depth = 4
  trie = SuffixTrie(depth)
  seqs = [list(map(int, rng.integers(0, 3, rng.integers(5, 30)))) for _ in range(6)]
  for i, s in enumerate(seqs):
    if i % 2:
      trie.add(i, s)
    else:  # grown token by token, as a per-request trie
      trie.open(i)
      for t in s:
        trie.append(i, t)
  trie.remove(seqs[0])  # FIFO eviction of the oldest
  live = seqs[1:]
  for n in range(1, depth + 2):
    for pattern in itertools.product(range(3), repeat=n):
      assert trie.occurrences(pattern) == _brute_count(live, list(pattern), depth), pattern


def test_suffix_score_equals_brute_force_expectation():
  """With tau tiny and room for every node, the score sum D = sum over continuations s of
  count(pattern + s) / count(pattern)."""
  rng = np.random.default_rng(3)
  depth = 5
  seqs = [list(map(int, rng.integers(0, 3, 40))) for _ in range(3)]
  trie = SuffixTrie(depth)
  for i, s in enumerate(seqs):
    trie.add(i, s)
  pattern = [1, 2]
  toks, pars, probs, score = expand(trie, trie.find(pattern), max_spec=10_000, tau=1e-9)
  base = _brute_count(seqs, pattern, depth)
  brute = sum(_brute_count(seqs, pattern + list(s), depth) / base
              for n in range(1, depth - len(pattern) + 1)
              for s in itertools.product(range(3), repeat=n))
  assert score == pytest.approx(brute, rel=1e-12)
  assert all(p <= q for p, q in zip(probs[1:], probs[:-1]))  # best first
  assert all(q < i for i, q in enumerate(pars))  # parents precede children


def test_suffix_bad_arguments():
  for kw in ({"tau": 0.0}, {"tau": 1.5}, {"alpha": 0}, {"n_nodes": 0}):
    with pytest.raises(ValueError, match=next(iter(kw))):
      SuffixDecoding(**kw)


def test_drafters_by_name():
  assert isinstance(make_drafter("tr"), TokenRecycling)
  assert isinstance(make_drafter("pld", 5), PromptLookup) and make_drafter("pld", 5).n_nodes == 5
  assert isinstance(make_drafter("suffix"), SuffixDecoding)
  with pytest.raises(ValueError, match="--speculate"):
    make_drafter("medusa")


def test_speculate_for_the_cli_equals_greedy():
  from jaxtok import decode
  from jaxtok.nn import ModelConfig, init_model
  from jaxtok.speculative import speculate
  cfg = ModelConfig(vocab_size=31, d_model=16, n_layers=1, n_heads=2, d_ff=32, max_len=64,
                    init_std=0.3)
  model = decode.Model.from_module(init_model(cfg, seed=0))
  ids, r = speculate(model, [1, 2, 3, 1, 2], "pld", max_new_tokens=10, warmup=False)
  ref = decode.generate(model, jnp.array([[1, 2, 3, 1, 2]]), max_new_tokens=10)
  assert ids == ref.rows()[0] and int(r.stats["steps_B"].sum()) >= 1


def test_drafters_implement_one_protocol():
  for d, proto in ((TokenRecycling(4), DeviceDrafter), (PromptLookup(4), DeviceDrafter),
                   (SuffixDecoding(4), HostDrafter), (HostPromptLookup(4), HostDrafter)):
    assert isinstance(d, proto)
    assert not isinstance(d, HostDrafter if proto is DeviceDrafter else DeviceDrafter)
  check_drafter(TokenRecycling(4))
  with pytest.raises(TypeError, match="drafter: expected.*DeviceDrafter.*HostDrafter"):
    check_drafter(object())
