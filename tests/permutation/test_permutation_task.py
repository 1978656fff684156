"""The inverse-permutation task (arXiv 2509.24125): generator, layouts, masks, exact bounds."""
import itertools
from fractions import Fraction

import numpy as np
import pytest

from jaxtok import permutation as pm
from jaxtok.config import ConfigError
from jaxtok.data.pipeline import fixed_batches


def test_vector_task_target_is_p_transpose_yp():
  b = pm.vector_batch(np.random.default_rng(0), 64, 5, n_scratch=3)
  np.testing.assert_array_equal(np.asarray(pm.bayes_inverse(b["x"], 5)), b["y"])
  p = b["x"][:, :5]
  # Row i of P is e_{sigma(i)}, and Y_P = P Y.
  np.testing.assert_array_equal(p.argmax(-1), b["perm"])
  np.testing.assert_array_equal(b["x"][:, 5:10], np.einsum("bij,bjk->bik", p, b["y"]))


def test_scratch_layout_shapes_and_masks():
  n, m = 4, 6
  b = pm.vector_batch(np.random.default_rng(1), 3, n, n_scratch=m)
  assert b["x"].shape == (3, 2 * n + m, n) and b["y"].shape == (3, n, n)
  assert not b["x"][:, 2 * n:].any()  # scratch rows carry no content, only their position
  np.testing.assert_array_equal(b["read"][0], np.arange(n + m, 2 * n + m))
  t = 2 * n + m
  causal = pm.mask_for("scratch", n, m, 2)
  assert causal.shape == (2, t, t) and (causal[0] == np.tril(np.ones((t, t), bool))).all()
  assert pm.mask_for("unmasked", n, m, 2).all()
  prefix = pm.mask_for("prefix", n, 0, 2)[0]
  assert prefix[:2 * n, :2 * n].all()  # bidirectional over [P; Y_P]
  tok = pm.token_batch(np.random.default_rng(2), 3, n, 5, n_scratch=m)
  voc = pm.token_vocab(n, 5)
  assert tok["inputs"].shape == tok["targets"].shape == tok["weights"].shape == (3, t)
  assert (tok["inputs"][:, 2 * n:] == voc["scratch"]).all()
  assert (tok["inputs"][:, :n] < n).all() and (tok["inputs"][:, n:2 * n] >= n).all()
  assert (tok["weights"][:, t - n:] == 1).all() and not tok["weights"][:, :t - n].any()
  # The answer at read row j is Y_j = Y_P[sigma^{-1}(j)].
  inv = np.argsort(tok["perm"], axis=1)
  np.testing.assert_array_equal(tok["targets"][:, t - n:],
                                np.take_along_axis(tok["inputs"][:, n:2 * n], inv, axis=1))


def test_source_is_deterministic_and_batches_through_grain():
  src = pm.PermutationSource(6, seed=3, n_scratch=6)
  a, b = src[17], pm.PermutationSource(6, seed=3, n_scratch=6)[17]
  for k in a:
    np.testing.assert_array_equal(a[k], b[k])
  assert not np.array_equal(a["x"], pm.PermutationSource(6, seed=4, n_scratch=6)[17]["x"])
  batches = fixed_batches(src, 8, 2, example_fn=lambda e: e)
  assert batches[0]["x"].shape == (8, 18, 6) and batches[0]["mask"].shape == (8, 18, 18)
  tok = pm.PermutationSource(4, seed=0, kind="tokens", k=3, variant="prefix")[0]
  assert tok["mask"].shape == (8, 8) and tok["inputs"].dtype == np.int32


def test_bad_arguments_raise_naming_them():
  with pytest.raises(ConfigError, match="n_scratch"):
    pm.vector_batch(np.random.default_rng(0), 2, 4, n_scratch=-1)
  with pytest.raises(ConfigError, match="variant"):
    pm.mask_for("sideways", 4, 0, 1)
  with pytest.raises(ConfigError, match="^k"):
    pm.token_batch(np.random.default_rng(0), 2, 4, 1)


def _brute_force_causal_optimum(n: int, m: int) -> float:
  """min over *all* functions of what each causal read row sees (sigma and the Y_P rows
  <= j + m) of the expected squared error: enumerate every (sigma, Y), predict by the
  conditional mean."""
  d = n
  total, count = 0.0, 0
  ys = np.array(list(itertools.product([0, 1], repeat=n * d)), np.float64).reshape(-1, n, d)
  for sigma in itertools.permutations(range(n)):
    yp = ys[:, list(sigma)]
    for j in range(n):
      seen = yp[:, :min(n, j + m + 1)].reshape(len(ys), -1)
      groups: dict[bytes, list[int]] = {}
      for idx, key in enumerate(map(bytes, seen.astype(np.uint8))):
        groups.setdefault(key, []).append(idx)
      for members in groups.values():
        target = ys[members, j]
        total += float(np.sum((target - target.mean(0)) ** 2))
    count += len(ys)
  return total / count


@pytest.mark.parametrize("n,m", [(2, 0), (3, 0), (3, 1)])
def test_exact_bound_equals_brute_force_optimum(n, m):
  assert pm.causal_mse_lower_bound(n, n_scratch=m) == pytest.approx(
      _brute_force_causal_optimum(n, m), abs=1e-12)


def test_bound_values_and_monte_carlo():
  assert pm.causal_mse_lower_bound(6) == 3.75 and pm.causal_mse_lower_bound(10) == 11.25
  assert pm.causal_mse_lower_bound(6, read="P") == 9.0
  assert pm.causal_mse_lower_bound(6, n_scratch=5) == 0.0
  perm = pm.sample_perms(np.random.default_rng(0), 200_000, 6)
  mc = 0.25 * 6 * pm.unrecoverable(perm).sum(1)
  se = mc.std() / np.sqrt(len(mc))
  assert abs(mc.mean() - 3.75) < 4 * se


@pytest.mark.parametrize("n,m", [(4, 0), (5, 1), (6, 0), (6, 3)])
def test_unrecoverable_distribution_matches_enumeration(n, m):
  counts = np.zeros(n + 1, np.int64)
  for sigma in itertools.permutations(range(n)):
    counts[pm.unrecoverable(np.array([sigma]), m).sum()] += 1
  dist = pm.unrecoverable_distribution(n, m)
  assert dist == [Fraction(int(c), len(list(itertools.permutations(range(n))))) for c in counts]
  assert sum(h * p for h, p in enumerate(dist)) == pm.expected_unrecoverable(n, m)


def test_token_bounds():
  b = pm.causal_token_bounds(6, 4)
  assert b["accuracy"] == pytest.approx(1 - 5 / 12 * 3 / 4)
  # Eulerian numbers: #{j: sigma^{-1}(j) > j} has law A(6, h)/720 = 1, 57, 302, 302, 57, 1.
  eul = [1, 57, 302, 302, 57, 1]
  assert b["exact_match"] == pytest.approx(sum(a * 0.25 ** h for h, a in enumerate(eul)) / 720)
  none = pm.causal_token_bounds(6, 4, n_scratch=6)
  assert none["accuracy"] == none["exact_match"] == 1.0 and none["cross_entropy"] == 0.0


def test_token_scores_on_known_logits():
  b = pm.token_batch(np.random.default_rng(5), 4, 3, 2, n_scratch=3)
  v = pm.token_vocab(3, 2)["size"]
  perfect = np.eye(v, dtype=np.float32)[b["targets"]] * 20.0
  s = pm.token_scores(perfect, b["targets"], b["weights"])
  assert float(s["accuracy"]) == float(s["exact_match"]) == 1.0
  assert float(s["cross_entropy"]) < 1e-6
  wrong = perfect.copy()
  wrong[0, -1] = np.roll(wrong[0, -1], 1)  # one answer token of one example is wrong
  s = pm.token_scores(wrong, b["targets"], b["weights"])
  assert float(s["accuracy"]) == pytest.approx(1 - 1 / 12) and float(s["exact_match"]) == 0.75
