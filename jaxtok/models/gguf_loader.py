"""Read (and write) Llama-architecture GGUF files: metadata, tokenizer fields and tensors.

GGUF is llama.cpp's single-file format (github.com/ggml-org/ggml, docs/gguf.md): a header, typed
key/value metadata (hyper-parameters under ``llama.*``, the tokenizer under ``tokenizer.ggml.*``)
and tensors stored as F32/F16/BF16 or block-quantised (Q8_0: 32 int8 + one fp16 scale; Q4_1: 32
nibbles + fp16 scale and min; ...). Tensors are dequantised to fp32 with the ``gguf`` package.

llama.cpp's converter permutes the rows of Q and K so that RoPE pairs dimension ``2i`` with
``2i+1`` (interleaved); jaxtok, like Hugging Face, pairs ``i`` with ``i + Dh/2`` (rotate-half),
so the permutation is undone on import and redone on export.
"""
from __future__ import annotations

import dataclasses
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from jaxtok.models.llama import CheckpointError, config_from_hf
from jaxtok.nn.config import ModelConfig

_HF_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm",
              "output": "lm_head"}


def _permute(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
  """rotate-half rows -> interleaved rows (what llama.cpp's convert_hf_to_gguf.py does)."""
  o = w_OxI.shape[0]
  return w_OxI.reshape(n_heads, 2, o // n_heads // 2, *w_OxI.shape[1:]).swapaxes(1, 2).reshape(
      w_OxI.shape)


def _unpermute(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
  o = w_OxI.shape[0]
  return w_OxI.reshape(n_heads, o // n_heads // 2, 2, *w_OxI.shape[1:]).swapaxes(1, 2).reshape(
      w_OxI.shape)


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q",
            11: "<q", 12: "<d"}


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  name: str
  shape: tuple[int, ...]  # numpy order (GGUF lists dims innermost first)
  qtype: int
  offset: int  # absolute byte offset in the file
  n_bytes: int


class _Cursor:
  """Reads GGUF header values from bytes; any read past the end is a truncated file."""

  def __init__(self, buf: bytes, path: Path):
    self.buf, self.pos, self.path = buf, 0, path

  def take(self, n: int) -> bytes:
    if self.pos + n > len(self.buf):
      raise CheckpointError(f"{self.path}: truncated GGUF file (header ends at byte "
                            f"{len(self.buf)}, needed {self.pos + n})")
    out = self.buf[self.pos:self.pos + n]
    self.pos += n
    return out

  def scalar(self, fmt: str):
    return struct.unpack(fmt, self.take(struct.calcsize(fmt)))[0]

  def string(self) -> str:
    raw = self.take(self.scalar("<Q"))
    try:
      return raw.decode("utf-8")
    except UnicodeDecodeError:
      raise CheckpointError(f"{self.path}: corrupt GGUF string at byte {self.pos}") from None

  def value(self, vtype: int):
    if vtype in _SCALARS:
      return self.scalar(_SCALARS[vtype])
    if vtype == 8:
      return self.string()
    if vtype == 9:
      itype, n = self.scalar("<I"), self.scalar("<Q")
      if itype in _SCALARS and itype != 7:
        dt = np.dtype(_SCALARS[itype])
        return np.frombuffer(self.take(n * dt.itemsize), dt).tolist()
      return [self.value(itype) for _ in range(n)]
    raise CheckpointError(f"{self.path}: corrupt GGUF metadata (value type {vtype})")


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], list[TensorInfo]]:
  """Parses GGUF metadata and tensor infos, checking every tensor lies inside the file.

  Our own parser, not ``gguf.GGUFReader``: that one memory-maps each string separately and takes
  ~8 s on SmolLM2's 98k-entry vocabulary; this takes a fraction of a second.
  """
  from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

  path = Path(path)
  if not path.is_file():
    raise CheckpointError(f"{path}: GGUF file not found")
  size = path.stat().st_size
  with open(path, "rb") as f:
    head = f.read(min(size, 64 << 20))
  if head[:4] != b"GGUF":
    raise CheckpointError(f"{path}: not a GGUF file (magic {head[:4]!r}, expected b'GGUF')")
  cur = _Cursor(head, path)
  cur.take(4)
  version = cur.scalar("<I")
  if version not in (2, 3):
    raise CheckpointError(f"{path}: unsupported GGUF version {version} (expected 2 or 3)")
  n_tensors, n_kv = cur.scalar("<Q"), cur.scalar("<Q")
  if n_tensors > 1 << 20 or n_kv > 1 << 20:
    raise CheckpointError(f"{path}: corrupt GGUF header ({n_tensors} tensors, {n_kv} keys)")
  meta = {}
  for _ in range(n_kv):
    key = cur.string()
    meta[key] = cur.value(cur.scalar("<I"))
  raw_infos = []
  for _ in range(n_tensors):
    name = cur.string()
    dims = [cur.scalar("<Q") for _ in range(cur.scalar("<I"))]
    raw_infos.append((name, tuple(reversed(dims)), cur.scalar("<I"), cur.scalar("<Q")))
  align = int(meta.get("general.alignment", 32))
  data_start = -(-cur.pos // align) * align
  infos = []
  for name, shape, qtype, offset in raw_infos:
    try:
      block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(qtype)]
    except (ValueError, KeyError):
      raise CheckpointError(f"{path}: tensor {name!r} has unknown GGML type {qtype}") from None
    n = int(np.prod(shape))
    info = TensorInfo(name, shape, qtype, data_start + offset, n // block * type_size)
    if info.offset + info.n_bytes > size:
      raise CheckpointError(f"{path}: truncated GGUF file: tensor {name!r} needs bytes "
                            f"[{info.offset}, {info.offset + info.n_bytes}) but the file has "
                            f"{size}")
    infos.append(info)
  return meta, infos


def config_from_metadata(meta: dict[str, Any], *, dtype: str, path: Path,
                         max_len: int | None = None) -> ModelConfig:
  arch = meta.get("general.architecture")
  if arch != "llama":
    raise CheckpointError(f"{path}: unsupported architecture general.architecture={arch!r}; "
                          "jaxtok loads 'llama' GGUF files")
  a = f"{arch}."
  scaling = meta.get(a + "rope.scaling.type")
  if scaling not in (None, "none"):
    raise CheckpointError(f"{path}: rope scaling {scaling!r} is unsupported")

  def need(key):
    if a + key not in meta:
      raise CheckpointError(f"{path}: missing metadata {a + key!r}")
    return meta[a + key]

  d, h = int(need("embedding_length")), int(need("attention.head_count"))
  vocab = meta.get(a + "vocab_size") or len(meta.get("tokenizer.ggml.tokens", []))
  if not vocab:
    raise CheckpointError(f"{path}: cannot tell the vocabulary size")
  hf = {
      "model_type": "llama", "hidden_size": d, "num_attention_heads": h,
      "num_hidden_layers": int(need("block_count")), "intermediate_size":
      int(need("feed_forward_length")), "vocab_size": int(vocab),
      "num_key_value_heads": int(meta.get(a + "attention.head_count_kv", h)),
      "head_dim": int(meta.get(a + "attention.key_length", d // h)),
      "max_position_embeddings": int(meta.get(a + "context_length", 2048)),
      "rope_theta": float(meta.get(a + "rope.freq_base", 10_000.0)),
      "rms_norm_eps": float(meta.get(a + "attention.layer_norm_rms_epsilon", 1e-5)),
      "tie_word_embeddings": True,  # fixed below from the tensor list
  }
  return config_from_hf(hf, dtype=dtype, max_len=max_len, source=str(path))


def read_gguf(path: str | os.PathLike, *, dtype: str = "float32",
              max_len: int | None = None) -> tuple[ModelConfig, dict[str, np.ndarray], dict]:
  """Returns (config, HF-named fp32 tensors, metadata) of a Llama GGUF file."""
  import gguf

  path = Path(path)
  meta, infos = read_header(path)
  cfg = config_from_metadata(meta, dtype=dtype, path=path, max_len=max_len)
  names = {t.name for t in infos}
  if "rope_freqs.weight" in names:
    raise CheckpointError(f"{path}: per-frequency RoPE factors (rope_freqs, Llama 3.1 scaling) "
                          "are unsupported")
  cfg = dataclasses.replace(cfg, tie_embeddings="output.weight" not in names)
  blob = np.fromfile(path, dtype=np.uint8)
  tensors = {}
  for t in infos:
    parts = t.name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _HF_NAMES:
      hf_name = f"model.layers.{parts[1]}.{_HF_NAMES[parts[2]]}.{parts[3]}"
    elif len(parts) == 2 and parts[0] in _TOP_NAMES:
      hf_name = f"{_TOP_NAMES[parts[0]]}.{parts[1]}"
    else:
      raise CheckpointError(f"{path}: unexpected tensor {t.name!r} for a llama model")
    qt = gguf.GGMLQuantizationType(t.qtype)
    raw = blob[t.offset:t.offset + t.n_bytes]
    try:
      if qt in (qt.F32, qt.F16):
        x = raw.view(np.float32 if qt == qt.F32 else np.float16)
      else:
        x = gguf.quants.dequantize(raw.reshape(-1, t.n_bytes // max(1, int(np.prod(t.shape[:-1])))),
                                   qt)
    except NotImplementedError:
      raise CheckpointError(f"{path}: tensor {t.name!r} has unsupported type {qt.name}") from None
    x = np.asarray(x, np.float32).reshape(t.shape)
    if parts[2:3] == ["attn_q"]:
      x = _unpermute(x, cfg.n_heads)
    elif parts[2:3] == ["attn_k"]:
      x = _unpermute(x, cfg.kv_heads)
    tensors[hf_name] = x
  return cfg, tensors, meta


def tokenizer_fields(meta: dict[str, Any]) -> dict[str, Any]:
  """The ``tokenizer.*`` metadata with the ``tokenizer.ggml.`` / ``tokenizer.`` prefix dropped."""
  out = {}
  for key, value in meta.items():
    if key.startswith("tokenizer.ggml."):
      out[key[len("tokenizer.ggml."):]] = value
    elif key.startswith("tokenizer."):
      out[key[len("tokenizer."):]] = value
  return out


def write_gguf(path: str | os.PathLike, cfg: ModelConfig, hf_tensors: dict[str, np.ndarray], *,
               tokenizer: dict[str, Any] | None = None, qtype: str = "F32") -> Path:
  """Writes a llama GGUF (tensors in ``qtype``: F32, F16 or Q8_0; norms always F32)."""
  import gguf

  path = Path(path)
  w = gguf.GGUFWriter(path, "llama")
  w.add_block_count(cfg.n_layers)
  w.add_context_length(cfg.max_len)
  w.add_embedding_length(cfg.d_model)
  w.add_feed_forward_length(cfg.d_ff)
  w.add_head_count(cfg.n_heads)
  w.add_head_count_kv(cfg.kv_heads)
  w.add_key_length(cfg.dh)
  w.add_value_length(cfg.dh)
  w.add_rope_dimension_count(cfg.dh)
  w.add_rope_freq_base(cfg.rope_theta)
  w.add_layer_norm_rms_eps(cfg.norm_eps)
  w.add_vocab_size(cfg.vocab_size)
  if tokenizer:
    w.add_tokenizer_model(tokenizer.get("model", "gpt2"))
    w.add_tokenizer_pre(tokenizer.get("pre", "default"))
    w.add_token_list(tokenizer["tokens"])
    w.add_token_types(tokenizer["token_type"])
    w.add_token_merges(tokenizer["merges"])
    for key in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id"):
      if tokenizer.get(key) is not None:
        w.add_uint32(f"tokenizer.ggml.{key}", int(tokenizer[key]))
    if tokenizer.get("chat_template"):
      w.add_chat_template(tokenizer["chat_template"])
  inv_top = {v: k for k, v in _TOP_NAMES.items()}
  inv_blk = {v: k for k, v in _HF_NAMES.items()}
  qt = gguf.GGMLQuantizationType[qtype]
  for name, x in hf_tensors.items():
    x = np.ascontiguousarray(x, np.float32)
    parts = name.split(".")
    if parts[0] == "model" and parts[1] == "layers":
      kind = inv_blk[".".join(parts[3:-1])]
      g_name = f"blk.{parts[2]}.{kind}.{parts[-1]}"
      if kind == "attn_q":
        x = _permute(x, cfg.n_heads)
      elif kind == "attn_k":
        x = _permute(x, cfg.kv_heads)
    else:
      g_name = f"{inv_top[name.rsplit('.', 1)[0]]}.{parts[-1]}"
    if x.ndim == 1 or qt == gguf.GGMLQuantizationType.F32:
      w.add_tensor(g_name, x)
    elif qt == gguf.GGMLQuantizationType.F16:
      w.add_tensor(g_name, x.astype(np.float16))
    else:
      w.add_tensor(g_name, gguf.quants.quantize(x, qt), raw_dtype=qt)
  w.write_header_to_file()
  w.write_kv_data_to_file()
  w.write_tensors_to_file()
  w.close()
  return path
