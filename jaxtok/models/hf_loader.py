"""Read (and write) Hugging Face Llama-family model directories: ``config.json`` + safetensors.

Safetensors (huggingface/safetensors) is an 8-byte little-endian header length, a JSON header of
tensor names, dtypes and byte ranges, then raw little-endian data. Sharded checkpoints list their
files in ``model.safetensors.index.json``. bf16/fp16 tensors are widened to fp32 on read.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from jaxtok.models.llama import CheckpointError, config_from_hf, config_to_hf
from jaxtok.nn.config import ModelConfig


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
  from safetensors import safe_open

  size = path.stat().st_size
  # Check the header against the file size first: the library's errors on a truncated file are
  # terse ("incomplete metadata"), and we want to name the file and what is missing.
  with open(path, "rb") as f:
    raw = f.read(8)
    if len(raw) < 8:
      raise CheckpointError(f"{path}: truncated safetensors file ({size} bytes, no header)")
    n = int.from_bytes(raw, "little")
    if n > size - 8:
      raise CheckpointError(f"{path}: truncated or corrupt safetensors file (header of {n} bytes "
                            f"in a {size}-byte file)")
    try:
      header = json.loads(f.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{path}: corrupt safetensors header ({e})") from None
  end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
  if 8 + n + end > size:
    raise CheckpointError(f"{path}: truncated safetensors file: tensors need {8 + n + end} bytes,"
                          f" the file has {size}")
  out = {}
  try:
    # framework="pt"-free path: numpy cannot hold bf16, so read bf16 through flax's jnp.
    with safe_open(path, framework="flax") as f:
      for name in f.keys():
        out[name] = np.asarray(f.get_tensor(name), dtype=np.float32)
  except Exception as e:
    raise CheckpointError(f"{path}: cannot read safetensors file ({type(e).__name__}: {e})"
                          ) from None
  return out


def read_hf_dir(path: str | os.PathLike, *, dtype: str = "float32", max_len: int | None = None
                ) -> tuple[ModelConfig, dict[str, np.ndarray], dict[str, Any]]:
  """Returns (config, HF-named fp32 tensors, config.json dict) of a model directory."""
  path = Path(path)
  cfg_path = path / "config.json"
  if not cfg_path.is_file():
    raise CheckpointError(f"{path}: not a Hugging Face model directory (no config.json)")
  try:
    hf = json.loads(cfg_path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{cfg_path}: invalid JSON ({e})") from None
  cfg = config_from_hf(hf, dtype=dtype, max_len=max_len, source=str(cfg_path))
  index = path / "model.safetensors.index.json"
  if index.is_file():
    files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
  else:
    files = sorted(p.name for p in path.glob("*.safetensors"))
  if not files:
    raise CheckpointError(f"{path}: no *.safetensors files (PyTorch .bin is not supported)")
  tensors = {}
  for name in files:
    tensors.update(_read_safetensors(path / name))
  if cfg.tie_embeddings and "lm_head.weight" in tensors:
    tensors.pop("lm_head.weight")  # some exporters save the tied copy too
  return cfg, tensors, hf


def write_hf_dir(path: str | os.PathLike, cfg: ModelConfig, hf_tensors: dict[str, np.ndarray],
                 *, tokenizer_json: str | None = None) -> Path:
  """Writes ``config.json`` + ``model.safetensors`` (fp32) loadable by transformers."""
  from safetensors.numpy import save_file

  path = Path(path)
  path.mkdir(parents=True, exist_ok=True)
  (path / "config.json").write_text(json.dumps(config_to_hf(cfg), indent=2))
  save_file({k: np.ascontiguousarray(v, np.float32) for k, v in hf_tensors.items()},
            path / "model.safetensors", metadata={"format": "pt"})
  if tokenizer_json is not None:
    (path / "tokenizer.json").write_text(tokenizer_json)
  return path
