"""Tokenizers of pretrained checkpoints: byte-level BPE rebuilt from GGUF metadata, or a HF
``tokenizer.json``, plus chat-template rendering.

Byte-level BPE (Radford et al. 2019, GPT-2; Sennrich et al., arXiv 1508.07909) maps every byte to a
printable character and merges pairs by rank. A GGUF file stores the vocabulary
(``tokenizer.ggml.tokens``), the ranked merges, token types (3 = control/special) and the name of
the pre-tokenizer (``tokenizer.ggml.pre``) that splits text before merging; the split regex for each
name comes from llama.cpp (src/llama-vocab.cpp). SmolLM2 uses ``smollm``: every digit on its own,
then the GPT-2 regex -- the same as its Hugging Face ``tokenizer.json``
(``Digits(individual_digits=True)`` then ``ByteLevel``).

Chat templates: rendered with jinja2 when it is installed (the exact template from the file);
otherwise ChatML (``<|im_start|>role\\n...<|im_end|>\\n``) is rendered directly, which is what the
SmolLM2 template produces.
"""
from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# Pre-tokenizer names in GGUF -> builder id. GPT-2 regex family with digits split one by one.
_DIGITS_THEN_GPT2 = ("smollm", "starcoder", "refact", "codeshell", "exaone", "minerva",
                     "command-r")
_GPT2 = ("gpt2", "gpt-2", "default", "olmo", "jais", "poro-chat", "viking", "phi-2", "stablelm2")
_LLAMA3 = ("llama3", "llama-v3", "llama-bpe", "smaug-bpe", "falcon3", "dbrx")
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
                 r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

def _bytes_to_unicode() -> dict[int, str]:
  """GPT-2's byte -> printable character table (Radford et al. 2019, encoder.py)."""
  bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1))
        + list(range(ord("\xae"), ord("\xff") + 1)))
  cs, n = bs[:], 0
  for b in range(256):
    if b not in bs:
      bs.append(b)
      cs.append(256 + n)
      n += 1
  return {b: chr(c) for b, c in zip(bs, cs)}


_BYTE_TO_CHAR = _bytes_to_unicode()

DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def _pre_tokenizer(pre: str):
  from tokenizers import Regex, pre_tokenizers

  if pre in _DIGITS_THEN_GPT2:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    pre_tokenizers.ByteLevel(add_prefix_space=False,
                                                             use_regex=True)])
  if pre in _GPT2:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
  if pre in _LLAMA3:
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  raise ValueError(f"tokenizer.ggml.pre={pre!r} is unsupported; known: "
                   f"{sorted(_DIGITS_THEN_GPT2 + _GPT2 + _LLAMA3)}")


@dataclasses.dataclass(frozen=True, eq=False)
class PretrainedTokenizer:
  """A HF ``tokenizers.Tokenizer`` plus the ids and chat template a model needs."""

  tokenizer: Any  # tokenizers.Tokenizer
  bos_id: int | None
  eos_id: int | None
  pad_id: int | None
  add_bos: bool = False
  chat_template: str | None = None
  # Bytes with no token of their own. SmolLM2's vocabulary lacks 21 (0x04, 0x06, 0xf1, ...), so
  # text containing them cannot round-trip (HF drops them too); ``encode(strict=True)`` raises.
  missing_bytes: frozenset[int] = frozenset()

  def can_encode(self, text: str) -> bool:
    return not (self.missing_bytes and self.missing_bytes.intersection(text.encode("utf-8")))

  @property
  def vocab_size(self) -> int:
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  def encode(self, text: str, *, add_bos: bool | None = None, strict: bool = False) -> list[int]:
    """Token ids of ``text``; special-token strings in it (``<|im_end|>``) map to their ids.

    ``strict``: raise if ``text`` holds a byte the vocabulary cannot represent (else it is dropped,
    as Hugging Face does).
    """
    if not isinstance(text, str):
      raise TypeError(f"text: expected str, got {type(text).__name__}")
    if strict and not self.can_encode(text):
      bad = sorted(self.missing_bytes.intersection(text.encode("utf-8")))
      raise ValueError(f"text: bytes {[hex(b) for b in bad]} have no token in this vocabulary")
    ids = self.tokenizer.encode(text, add_special_tokens=False).ids
    if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids

  def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts), add_special_tokens=False)]

  def decode(self, ids: Sequence[int], *, skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

  def id_to_token(self, i: int) -> str | None:
    return self.tokenizer.id_to_token(int(i))

  def apply_chat_template(self, messages: Sequence[dict[str, str]], *,
                          add_generation_prompt: bool = True) -> str:
    """Renders ``[{"role": ..., "content": ...}, ...]`` to the prompt string the model expects."""
    for i, m in enumerate(messages):
      if not isinstance(m, dict) or "role" not in m or "content" not in m:
        raise ValueError(f"messages[{i}]: expected a dict with 'role' and 'content', got {m!r}")
    if self.chat_template:
      try:
        import jinja2.sandbox
      except ImportError:
        pass
      else:
        env = jinja2.sandbox.ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        return env.from_string(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt,
            bos_token="", eos_token=self.decode([self.eos_id]) if self.eos_id is not None else "")
    return render_chatml(messages, add_generation_prompt=add_generation_prompt)

  # ---- constructors --------------------------------------------------------------------------

  @classmethod
  def from_gguf_fields(cls, fields: dict[str, Any], *, source: str = "GGUF") -> PretrainedTokenizer:
    """From ``tokenizer.ggml.*`` metadata (prefix dropped: tokens, merges, token_type, pre, ...)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models

    model = fields.get("model")
    if model != "gpt2":
      raise ValueError(f"{source}: tokenizer.ggml.model={model!r} is unsupported (jaxtok rebuilds "
                       "byte-level BPE, model 'gpt2'; load a HF directory with tokenizer.json)")
    tokens = list(fields.get("tokens") or [])
    merges = [tuple(m.split(" ", 1)) for m in fields.get("merges") or []]
    if not tokens or not merges:
      raise ValueError(f"{source}: tokenizer vocabulary or merges missing from the metadata")
    types = list(fields.get("token_type") or [1] * len(tokens))
    vocab = {tok: i for i, tok in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False)
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = _pre_tokenizer(fields.get("pre", "default"))
    tok.decoder = decoders.ByteLevel()
    # Control tokens (type 3) are matched whole in the input and kept out of BPE.
    specials = [AddedToken(t, special=True, normalized=False)
                for t, ty in zip(tokens, types) if ty == 3]
    if specials:
      tok.add_special_tokens(specials)

    def opt(key):
      v = fields.get(key)
      return None if v is None else int(v)

    missing = frozenset(b for b in range(256) if _BYTE_TO_CHAR[b] not in vocab)
    return cls(tokenizer=tok, bos_id=opt("bos_token_id"), eos_id=opt("eos_token_id"),
               pad_id=opt("padding_token_id"), add_bos=bool(fields.get("add_bos_token", False)),
               chat_template=fields.get("chat_template"), missing_bytes=missing)

  @classmethod
  def from_hf_dir(cls, path: str | os.PathLike) -> PretrainedTokenizer:
    """From ``tokenizer.json`` (+ ``tokenizer_config.json`` for specials/template) in ``path``."""
    from tokenizers import Tokenizer

    path = Path(path)
    if not (path / "tokenizer.json").is_file():
      raise FileNotFoundError(f"{path}: no tokenizer.json")
    try:
      tok = Tokenizer.from_file(str(path / "tokenizer.json"))
    except Exception as e:  # noqa: BLE001 - tokenizers raises a bare Exception on bad JSON
      raise ValueError(f"{path / 'tokenizer.json'}: not a valid tokenizers file ({e})") from e
    conf = {}
    if (path / "tokenizer_config.json").is_file():
      try:
        conf = json.loads((path / "tokenizer_config.json").read_text())
      except json.JSONDecodeError as e:
        raise ValueError(f"{path / 'tokenizer_config.json'}: not valid JSON ({e})") from e
      if not isinstance(conf, dict):
        raise ValueError(f"{path / 'tokenizer_config.json'}: expected a JSON object, got "
                         f"{type(conf).__name__}")

    def tid(key):
      v = conf.get(key)
      if isinstance(v, dict):
        v = v.get("content")
      return None if v is None else tok.token_to_id(v)

    return cls(tokenizer=tok, bos_id=tid("bos_token"), eos_id=tid("eos_token"),
               pad_id=tid("pad_token"), add_bos=bool(conf.get("add_bos_token", False)),
               chat_template=conf.get("chat_template"))

  def to_json(self) -> str:
    return self.tokenizer.to_str()


def render_chatml(messages: Sequence[dict[str, str]], *, add_generation_prompt: bool = True,
                  default_system: str | None = DEFAULT_SYSTEM) -> str:
  """ChatML as SmolLM2's template writes it (a default system turn when none is given)."""
  parts = []
  if default_system is not None and messages and messages[0]["role"] != "system":
    parts.append(f"<|im_start|>system\n{default_system}<|im_end|>\n")
  for m in messages:
    parts.append(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n")
  if add_generation_prompt:
    parts.append("<|im_start|>assistant\n")
  return "".join(parts)
