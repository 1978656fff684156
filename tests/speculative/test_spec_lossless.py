"""Speculative decoding is lossless: greedy output equals plain greedy token for token, the cache
after commit equals the token-by-token cache, and sampling acceptance draws the target law."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from jaxtok import decode
from jaxtok.cache import init_cache
from jaxtok.decode import Sampling
from jaxtok.nn import ModelConfig, init_model
from jaxtok.speculative import (HostPromptLookup, PromptLookup, SuffixDecoding, TokenRecycling,
                                accept_sample, acceptance_rate, generate, host_loop, loop, mat,
                                make_tree, min_capacity)
from jaxtok.speculative.tree import DraftTree

V = 37
CFG = ModelConfig(vocab_size=V, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                  max_len=128, init_std=0.4)  # large weights: non-repetitive greedy text
T, NEW = 8, 24
LENS = np.array([8, 3, 6])


def _model(seed):
  return decode.Model.from_module(init_model(CFG, seed=seed))


def _prompts(seed):
  return jax.random.randint(jax.random.key(100 + seed), (len(LENS), T), 0, V)


# An adversarial tree around the true continuation c0 c1 c2 (read from the reference output):
# root -> [wrong, c0, c0 (duplicate sibling)]; c0 -> [c1, wrong]; dup c0 -> [c1];
# c1 -> [wrong, c2]; the deepest correct node is 7 (c0 c1 c2), reached through node 2, not 3.
PARENT = np.array([0, 0, 0, 0, 2, 2, 3, 4, 4], np.int32)
WHICH = np.array([-1, -2, 0, 0, 1, -2, 1, -2, 2], np.int32)  # -2: wrong, k >= 0: c_k


EOS = 26


@dataclasses.dataclass(frozen=True)
class OracleDrafter:
  """Builds the adversarial tree from the reference sequence [B, C] (laid out like the loop's
  context) in its state; with the state's flag set, every drafted token is wrong instead."""
  n_nodes: int = len(PARENT)
  prompt_logits = False

  def init(self, vocab_size):
    raise AssertionError("pass (reference, all_wrong) as drafter_state")

  def propose(self, state, ctx, root_B):
    ref_BxC, all_wrong = state
    c = ref_BxC.shape[1]
    idx_BxN = ctx.len_B[:, None] + jnp.maximum(jnp.asarray(WHICH), 0)[None]
    true_BxN = jnp.take_along_axis(ref_BxC, jnp.minimum(idx_BxN, c - 1), axis=1)
    wrong = jnp.asarray(WHICH == -2)[None] | all_wrong
    tokens_BxN = jnp.where(wrong, (true_BxN + 1) % V, true_BxN).at[:, 0].set(root_B)
    b = root_B.shape[0]
    return make_tree(tokens_BxN, jnp.broadcast_to(jnp.asarray(PARENT), (b, len(PARENT))),
                     check=False)

  def observe(self, state, tree, logits, acc):
    return state


def _reference(model, prompts, eos_id=EOS):
  ref = decode.generate(model, prompts, jnp.asarray(LENS), max_new_tokens=NEW, eos_id=eos_id)
  out, n = np.asarray(ref.tokens_BxN), ref.n_B
  ref = np.zeros((len(LENS), 256), np.int32)
  for b, m in enumerate(LENS):
    seq = np.concatenate([np.asarray(prompts[b, :m]), out[b]])
    ref[b, :len(seq)] = seq
  return out, np.asarray(n), jnp.asarray(ref)


DRAFTERS = {"tr": TokenRecycling(n_nodes=8, k=3), "pld": PromptLookup(n_nodes=6),
            "suffix": SuffixDecoding(n_nodes=8), "host-pld": HostPromptLookup(n_nodes=8),
            "adversarial": OracleDrafter()}


@pytest.mark.parametrize("name", sorted(DRAFTERS))
def test_greedy_speculative_equals_greedy_over_seeds(name):
  """Token for token plain greedy (EOS included), with the cache at its minimum capacity so
  the last trees fill it to the last slot; TR also hot-started, the oracle also all-wrong."""
  drafter = DRAFTERS[name]
  cap = min_capacity(T, NEW, drafter.n_nodes)
  eos_hit = 0
  for seed in range(2):
    model = _model(seed)
    prompts = _prompts(seed)
    ref, n_ref, ref_ctx = _reference(model, prompts)
    eos_hit += int(np.sum(n_ref < NEW))
    states = ([(ref_ctx, False), (ref_ctx, True)] if name == "adversarial" else [None])
    for st in states:
      r = generate(model, prompts, jnp.asarray(LENS), drafter=drafter, max_new_tokens=NEW,
                   capacity=cap, drafter_state=st, eos_id=EOS)
      np.testing.assert_array_equal(r.tokens_BxN, ref, err_msg=f"{name} seed {seed}")
      np.testing.assert_array_equal(r.n_B, n_ref)
      if st is not None and not st[1]:  # three drafted tokens are right at every full step
        # (every step but a row's last, which EOS or max_new_tokens may cut: MAT counts only
        # emitted tokens, so a row cut short lowers it below 4)
        steps_B, acc_B = np.asarray(r.stats["steps_B"]), np.asarray(r.stats["accepted_B"])
        assert np.all(acc_B >= 3 * (steps_B - 1)), (steps_B, acc_B)
        assert mat(r) >= 3, mat(r)
      if st is not None and st[1]:
        assert int(jnp.sum(r.stats["accepted_B"])) == 0 and mat(r) == 1.0
    if name == "tr":
      hot = generate(model, prompts, jnp.asarray(LENS), drafter=drafter, max_new_tokens=NEW,
                     capacity=cap, drafter_state=r.stats["drafter_state"], eos_id=EOS)
      np.testing.assert_array_equal(hot.tokens_BxN, ref)
  assert eos_hit > 0  # some row stopped at EOS


def test_mat_counts_only_emitted_tokens():
  """The oracle drafts 3 right tokens a step: 5 steps emit 1 + 5 * 4 = 21 tokens, the 6th may
  emit only 2 more of max_new_tokens = 23 - its third accepted draft and bonus are cut and must
  not count (MAT 22 / 6, not 24 / 6)."""
  model = _model(0)
  prompts = _prompts(0)
  _, _, ref_ctx = _reference(model, prompts, eos_id=None)
  r = generate(model, prompts, jnp.asarray(LENS), drafter=OracleDrafter(), max_new_tokens=NEW - 1,
               drafter_state=(ref_ctx, False))
  np.testing.assert_array_equal(r.n_B, NEW - 1)
  np.testing.assert_array_equal(r.stats["steps_B"], 6)
  np.testing.assert_array_equal(r.stats["accepted_B"], 5 * 3 + 2)
  assert mat(r) == pytest.approx(22 / 6)
  assert mat([r, r]) == pytest.approx(22 / 6)


def test_replaying_requests_raises_suffix_acceptance():
  model = _model(0)
  prompts = _prompts(0)
  sd = SuffixDecoding(n_nodes=8)
  cap = min_capacity(T, NEW, 8)  # the greedy test's shapes: no new compile
  runs = [generate(model, prompts, jnp.asarray(LENS), drafter=sd, max_new_tokens=NEW,
                   capacity=cap, eos_id=EOS) for _ in range(2)]
  assert acceptance_rate(runs[1]) > acceptance_rate(runs[0])
  assert mat(runs[1]) > mat(runs[0]) + 0.5
  assert runs[1].stats["draft_s"] < runs[1].stats["wall_s"]
  np.testing.assert_array_equal(runs[0].tokens_BxN, runs[1].tokens_BxN)
  # the offline simulator (no model) replays the same acceptance as the online greedy run
  prompts_l = [list(map(int, np.asarray(prompts[b, :m]))) for b, m in enumerate(LENS)]
  resp = runs[0].rows()
  fresh = SuffixDecoding(n_nodes=8)
  for run in runs:
    sim = host_loop.simulate_host(fresh, prompts_l, resp, max_new_tokens=NEW)
    assert sim == tuple(int(jnp.sum(run.stats[k])) for k in ("steps_B", "accepted_B",
                                                             "drafted_B"))


def test_cache_after_commit_equals_token_by_token_cache():
  model = _model(1)
  prompts = _prompts(1)
  _, _, ref_ctx = _reference(model, prompts, eos_id=None)
  new = 10
  s = loop.generate_on_device(model, OracleDrafter(), (ref_ctx, False), prompts,
                              jnp.asarray(LENS), jax.random.key(0), capacity=64,
                              max_new_tokens=new, sampling=Sampling(), eos_id=None)
  assert int(jnp.min(s.accepted_B)) >= 6  # real multi-token commits happened
  # the same tokens one at a time: prefill, then every emitted token but the root
  _, c = decode.prefill(model, init_cache(CFG, len(LENS), 64), prompts, jnp.asarray(LENS))
  n_B = np.asarray(s.n_B)
  step = jax.jit(decode.decode_step)
  for i in range(int(n_B.max()) - 1):
    _, c2 = step(model, c, s.tokens_BxM[:, i])
    # rows that emitted fewer tokens stop advancing (commit nothing past their own count)
    live_B = jnp.asarray(i < n_B - 1)
    c = jax.tree.map(lambda a, b: jnp.where(live_B.reshape((-1,) + (1,) * (a.ndim - 1)), a, b),
                     c2, c)
  np.testing.assert_array_equal(s.cache.next_pos, c.next_pos)
  for a, b in zip(s.cache.layers, c.layers):
    np.testing.assert_array_equal(a.length, b.length)
    live = np.arange(a.capacity)[None, None] < np.asarray(b.length)[..., None]
    np.testing.assert_array_equal(np.where(live, a.pos, -1), np.where(live, b.pos, -1))
    for x, y in ((a.k, b.k), (a.v, b.v)):
      np.testing.assert_allclose(np.where(live[..., None], x, 0), np.where(live[..., None], y, 0),
                                 atol=1e-5)


def test_sampling_acceptance_is_lossless_on_a_toy_target():
  """2e5 draws: the first emitted token has the warped target law (TV < 0.01, chi-square
  p > 1e-3); given that it is node a's token, the second has node a's law (chi-square)."""
  rng = np.random.default_rng(0)
  logits_NxV = jnp.asarray(rng.normal(size=(7, 8)) * 1.5, jnp.float32)
  sampling = Sampling(temperature=0.8, top_k=6)
  order = np.argsort(-np.asarray(logits_NxV[0]))
  a, b, c = order[0], order[1], order[-1]  # c is outside the top-k: probability 0
  d, e = np.argsort(-np.asarray(logits_NxV[1]))[:2]
  # root -> [a, b, b (duplicate sibling), c]; a -> [d, e]
  tree = make_tree(np.array([[0, a, b, b, c, d, e]]), np.array([[0, 0, 0, 0, 0, 1, 1]]))
  n = 200_000
  keys = jax.random.split(jax.random.key(1), n)
  one = lambda k: accept_sample(tree, logits_NxV[None], sampling, k).emitted(tree)[0, :2]  # noqa
  first2 = np.asarray(jax.jit(jax.vmap(one))(keys))
  for node, sel in ((0, np.ones(n, bool)), (1, first2[:, 0] == a)):
    draws = first2[sel, 0 if node == 0 else 1]
    assert len(draws) > 20_000
    p = np.asarray(jax.nn.softmax(decode.warp(logits_NxV[node][None], sampling))[0], np.float64)
    counts = np.bincount(draws, minlength=8)
    if node == 0:  # all 2e5 draws (the conditional has fewer: its chi-square is the test)
      assert 0.5 * np.abs(counts / len(draws) - p).sum() < 0.01
    support = p > 0
    assert counts[~support].sum() == 0
    expected = p[support] / p[support].sum() * len(draws)
    chi = stats.chisquare(counts[support], expected)
    assert chi.pvalue > 1e-3, (node, chi)


def test_sampling_generation_first_two_tokens_match_plain_sampling():
  """Speculative sampling's first two tokens have plain sampling's law (tiny model, 3000 rows:
  two-sample chi-square on the second token and on the pair's coarse classes)."""
  model = _model(2)
  # sharpen the tiny model so the law is far from uniform and drafts get accepted
  model = model.with_params(jax.tree.map(
      lambda x: x * 6.0 if x.ndim == 2 and x.shape[0] == V else x, model.params))
  n = 2000
  prompts = jnp.broadcast_to(jnp.array([[3, 9, 4, 3, 9]]), (n, 5))
  sampling = Sampling(temperature=1.0)
  spec = generate(model, prompts, drafter=TokenRecycling(n_nodes=6, k=2), max_new_tokens=2,
                  sampling=sampling, key=jax.random.key(7))
  assert int(jnp.sum(spec.stats["accepted_B"])) > 0  # acceptance is exercised
  plain = decode.generate(model, prompts, max_new_tokens=2, sampling=sampling,
                          key=jax.random.key(8))
  s, q = np.asarray(spec.tokens_BxN), np.asarray(plain.tokens_BxN)
  for a, b in ((s[:, 1], q[:, 1]), (s[:, 0] * 4 + s[:, 1] % 4, q[:, 0] * 4 + q[:, 1] % 4)):
    cats = np.union1d(a, b)
    table = np.stack([[np.sum(a == c) for c in cats], [np.sum(b == c) for c in cats]])
    table = table[:, table.sum(0) >= 10]
    assert table.shape[1] >= 2
    assert stats.chi2_contingency(table).pvalue > 1e-3


def test_bad_input_names_the_argument():
  model = _model(0)
  with pytest.raises(ValueError, match="capacity"):
    generate(model, _prompts(0), drafter=TokenRecycling(n_nodes=16), max_new_tokens=8,
             capacity=20)
  with pytest.raises(TypeError, match="drafter.*DeviceDrafter.*HostDrafter"):
    generate(model, _prompts(0), drafter="tr", max_new_tokens=8)
  with pytest.raises(TypeError, match="model"):
    generate((model.graphdef, model.params), _prompts(0), drafter=TokenRecycling(),
             max_new_tokens=8)
  with pytest.raises(ValueError, match="parent"):
    make_tree(np.zeros((1, 3)), np.array([[0, 0, 2]]))
  with pytest.raises(ValueError, match="k"):
    TokenRecycling(k=0)


def test_padding_nodes_are_never_accepted():
  tree = make_tree(np.array([[0, 4, 4]]), np.array([[0, 0, 1]]), np.array([[True, False, True]]))
  assert not bool(tree.valid_BxN[0, 2])  # its parent is padding
  assert isinstance(tree, DraftTree)
