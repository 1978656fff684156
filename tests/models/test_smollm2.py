"""SmolLM2-135M-Instruct loaded from its GGUF matches Hugging Face transformers (fp32, 1e-3).

Golden values: tests/fixtures/golden_smollm2.npz, written by scripts/make_golden_llama.py from
``LlamaForCausalLM`` on the same file.
"""
from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxtok import decode
from jaxtok.cli import generate as generate_cli
from jaxtok.nn.transformer import default_positions, forward

FIX = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(FIX / "golden_smollm2.npz"))


_FWD = jax.jit(forward, static_argnums=0)  # one compile for every [1, 64] forward here


@pytest.fixture(scope="module")
def logits_TxV(smollm2, golden):
  ids = jnp.asarray(golden["ids"])[None]
  logits = _FWD(smollm2.graphdef, smollm2.params, ids, default_positions(1, ids.shape[1])).logits
  return np.asarray(logits[0])


def test_config_matches_the_model_card(smollm2):
  cfg = smollm2.cfg
  assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.kv_heads, cfg.dh, cfg.d_ff) == (
      30, 576, 9, 3, 64, 1536)
  assert cfg.vocab_size == 49152 and cfg.tie_embeddings and cfg.rope_theta == 1e5
  assert smollm2.defn.metadata["llama.context_length"] == 8192


def test_prompt_logprobs_match_transformers(logits_TxV, golden):
  ids = golden["ids"]
  logp = jax.nn.log_softmax(jnp.asarray(logits_TxV), -1)
  ours = np.asarray(logp[:-1][np.arange(len(ids) - 1), ids[1:]])
  np.testing.assert_allclose(ours, golden["prompt_logprobs"], atol=1e-3, rtol=0)


def test_topk_logits_match_transformers(logits_TxV, golden):
  ours = np.take_along_axis(logits_TxV, golden["topk_ids"], axis=1)
  np.testing.assert_allclose(ours, golden["topk_logits"], atol=1e-3, rtol=0)
  np.testing.assert_array_equal(logits_TxV.argmax(-1), golden["topk_ids"][:, 0])


def test_cached_decoding_equals_full_forward(smollm2, golden, logits_TxV):
  """Prefill 48 tokens, decode 8 greedily through the KV cache; compare with one full forward."""
  g, p = smollm2.graphdef, smollm2.params
  begin, step = generate_cli._stream_fns()  # the streaming driver
  ids = np.asarray(golden["ids"]).copy()
  padded = np.zeros((1, 56), np.int32)
  padded[0, :48] = ids[:48]
  state = begin(smollm2, jnp.asarray(padded), jnp.array([48]), jax.random.key(0), capacity=64,
                max_new_tokens=8)
  np.testing.assert_allclose(np.asarray(state.logits_BxV[0]), logits_TxV[47], atol=2e-3, rtol=0)
  got = []
  for i, t in enumerate(range(48, 56)):
    state = step(smollm2, state, sampling=decode.Sampling(), eos_id=None)
    ids[t] = int(state.tokens_BxN[0, i])
    got.append(np.asarray(state.logits_BxV[0]))
  np.testing.assert_array_equal(np.asarray(state.cache.next_pos), [56])
  full = _FWD(g, p, jnp.asarray(ids)[None], default_positions(1, 64)).logits
  np.testing.assert_allclose(np.stack(got), np.asarray(full[0, 48:56]), atol=2e-3, rtol=0)


def test_greedy_continuation_matches_transformers(smollm2):
  ref = json.loads((FIX / "golden_smollm2_tokenizer.json").read_text())["greedy_capital_of_france"]
  tok = smollm2.tokenizer
  prompt = tok.encode("The capital of France is")
  assert ref[:len(prompt)] == prompt
  new = list(generate_cli.stream_tokens(smollm2, prompt,
                                        max_new_tokens=len(ref) - len(prompt),
                                        sampling=decode.Sampling(), key=jax.random.key(0),
                                        capacity=64))
  assert new == ref[len(prompt):]
  assert tok.decode(new).startswith(" Paris")


def test_chat_template(smollm2):
  tok = smollm2.tokenizer
  text = tok.apply_chat_template([{"role": "user", "content": "Hi"}])
  assert text == ("<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by "
                  "Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
  ids = tok.encode(text)
  assert ids[0] == 1 and ids.count(2) == 2  # <|im_start|> / <|im_end|> stay single tokens
  assert tok.eos_id == 2 and tok.decode([tok.eos_id]) == "<|im_end|>"


def test_prompt_longer_than_cache_is_an_error():
  with pytest.raises(ValueError, match="exceeds the KV-cache capacity 128.*--truncate"):
    generate_cli.plan_capacity([100], 64, max_len=8192, capacity=128)
  cap, keep = generate_cli.plan_capacity([100], 64, max_len=8192, capacity=128, truncate=True)
  assert (cap, keep) == (128, 64)
  assert generate_cli.plan_capacity([10], 20, max_len=8192) == (256, 10)
