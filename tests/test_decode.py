import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import hlo
from jaxtok.decode import Model, Sampling, generate, generate_on_device, sample, warp
from jaxtok.nn import ModelConfig, default_positions, forward, init_model

CFG = ModelConfig(vocab_size=41, d_model=32, n_layers=2, n_heads=4, n_kv_heads=1, d_ff=48,
                  max_len=48)


@pytest.fixture(scope="module")
def model():
  return Model.from_module(init_model(CFG, seed=3))


def test_greedy_generation_equals_uncached_argmax_for_ragged_batch(model):
  """Each generated token is the argmax of one uncached forward over prompt + generated prefix."""
  g, p = model.graphdef, model.params
  prompts = jax.random.randint(jax.random.key(0), (3, 7), 0, 41)
  lengths = jnp.array([7, 2, 5])
  res = generate(model, prompts, lengths, max_new_tokens=9)
  out, n = res.tokens_BxN, res.n_B
  np.testing.assert_array_equal(n, [9, 9, 9])
  for i, length in enumerate(lengths):
    seq = jnp.concatenate([prompts[i, :length], out[i]])[None]
    logits = forward(g, p, seq, default_positions(1, seq.shape[1])).logits
    greedy = np.asarray(jnp.argmax(logits[0, length - 1:-1], -1))
    np.testing.assert_array_equal(out[i], greedy)


def test_eos_stops_and_pads(model):
  prompt = jnp.array([[1, 2, 3]])
  out = generate(model, prompt, max_new_tokens=6).tokens_BxN
  eos = int(out[0, 2])
  res = generate(model, prompt, max_new_tokens=6, eos_id=eos)
  out2, n2 = res.tokens_BxN, res.n_B
  first = int(np.argmax(np.asarray(out[0]) == eos))
  assert int(n2[0]) == first + 1
  np.testing.assert_array_equal(out2[0, first + 1:], 0)


def test_sampling_filters():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  keys = jax.random.split(jax.random.key(0), 2000)
  draw = lambda s: np.asarray(jax.vmap(lambda k: sample(logits, k, s)[0])(keys))
  assert set(draw(Sampling(temperature=1.0, top_k=2))) == {0, 1}
  assert set(draw(Sampling(temperature=1.0, top_p=0.7))) == {0, 1}  # 0.5 < 0.7 <= 0.8
  assert set(draw(Sampling(temperature=1.0, top_p=0.4))) == {0}
  freq = np.bincount(draw(Sampling(temperature=1.0)), minlength=4) / 2000
  np.testing.assert_allclose(freq, [0.5, 0.3, 0.15, 0.05], atol=0.04)


def test_warp_is_the_distribution_sample_draws_from():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  # Temperature 2 first: p ~ sqrt(p) = [.379, .293, .208, .120]; top-p 0.7 then keeps the
  # first three (mass before the third is .672 < .7), renormalised.
  warped = jax.nn.softmax(warp(logits, Sampling(temperature=2.0, top_p=0.7)))[0]
  expected = np.sqrt([0.5, 0.3, 0.15]) / np.sqrt([0.5, 0.3, 0.15]).sum()
  np.testing.assert_allclose(warped, [*expected, 0], atol=1e-6)
  with pytest.raises(ValueError, match="greedy"):
    warp(logits, Sampling())


def test_bad_generation_arguments(model):
  with pytest.raises(ValueError, match="capacity"):
    generate(model, jnp.zeros((1, 40), jnp.int32), max_new_tokens=20)
  with pytest.raises(ValueError, match="token ids"):
    generate(model, jnp.array([[1, 41]]), max_new_tokens=2)
  with pytest.raises(ValueError, match="prompt_len_B"):
    generate(model, jnp.array([[1, 2]]), jnp.array([3]), max_new_tokens=2)
  # TypeError naming the argument (jaxtok's own check; beartype's in this test session).
  with pytest.raises(TypeError, match="model"):
    generate((model.graphdef, model.params), jnp.array([[1, 2]]), max_new_tokens=2)
  with pytest.raises(TypeError, match="compactor"):
    generate(model, jnp.array([[1, 2]]), max_new_tokens=2, compactor="snapkv")
  with pytest.raises(TypeError, match="sampling"):
    generate(model, jnp.array([[1, 2]]), max_new_tokens=2, sampling=0.5)
  with pytest.raises(ValueError, match="top_p"):
    Sampling(temperature=1.0, top_p=0.0)


@pytest.mark.parametrize("b", [1, 3])
def test_decode_loop_updates_the_cache_in_place(model, b):
  """No per-step copy of a layer's [B, K, S, Dh] cache inside the generation loop: one would
  cost a full pass over the cache per layer per token (it once doubled SmolLM2's step time;
  batch 1 lowers the cache write differently from larger batches)."""
  capacity = 24
  compiled = generate_on_device.lower(model, jnp.zeros((b, 5), jnp.int32), jnp.full((b,), 5),
                                      jax.random.key(0), capacity=capacity, max_new_tokens=4,
                                      sampling=Sampling(), eos_id=None).compile()
  body = hlo.while_body_lines(compiled.as_text())
  assert body, "no while loop found in the compiled generation"
  copies = hlo.copies_of(body, "f32", (b, CFG.kv_heads, capacity, CFG.dh))
  assert not copies, f"{len(copies)} cache copies per step, e.g. {copies[0].strip()[:160]}"


def test_model_handle_compiles_once_per_definition(model):
  """The Model pytree's static part is its ModelDef (identity hash): new parameters of the same
  definition reuse the compiled program; a new definition compiles anew."""
  prompt = jnp.array([[1, 2, 3]])
  generate(model, prompt, max_new_tokens=2)
  before = generate_on_device._cache_size()
  other = model.with_params(jax.tree.map(lambda x: x * 1.5, model.params))
  generate(other, prompt, max_new_tokens=2)
  assert generate_on_device._cache_size() == before
  generate(Model.from_module(init_model(CFG, seed=3)), prompt, max_new_tokens=2)
  assert generate_on_device._cache_size() == before + 1


@dataclasses.dataclass(frozen=True)
class _CountingCompactor:
  """Counts observed steps in aux and, every ``every`` steps, rolls the cache back by nothing
  but records how many compactions ran (the hook's contract, not a policy)."""
  every: int = 3
  needs_stats: bool = True

  def start(self, m, cache, prompt_BxT, prompt_len_B):
    from jaxtok.decode import prefill
    logits, cache = prefill(m, cache, prompt_BxT, prompt_len_B)
    return logits, cache, (jnp.int32(0), jnp.int32(0))

  def observe(self, aux, out, cache):
    assert out.stats is not None and len(out.stats) == CFG.n_layers
    return aux[0] + 1, aux[1]

  def compact(self, cache, aux):
    return cache, (aux[0], aux[1] + 1)


def test_compactor_hook_observes_every_step_and_compacts_every_k(model):
  """With a hook that leaves the cache alone, the tokens equal plain greedy decoding (sampling
  and EOS come from the one loop), the hook saw every step and compacted every 3rd."""
  prompt = jnp.array([[1, 2, 3], [4, 5, 0]])
  lengths = jnp.array([3, 2])
  plain = generate(model, prompt, lengths, max_new_tokens=7)
  from jaxtok.decode import start, decode_loop
  comp = _CountingCompactor()
  state = jax.jit(lambda m: decode_loop(
      m, start(m, prompt, lengths, jax.random.key(0), capacity=16, max_new_tokens=7,
               compactor=comp), sampling=Sampling(), eos_id=None, compactor=comp))(model)
  np.testing.assert_array_equal(state.tokens_BxN, plain.tokens_BxN)
  assert int(state.aux[0]) == 7 and int(state.aux[1]) == 2
  hooked = generate(model, prompt, lengths, max_new_tokens=7, compactor=comp, capacity=16)
  np.testing.assert_array_equal(hooked.tokens_BxN, plain.tokens_BxN)
