"""Pretrained Llama-family checkpoints: ``load(name_or_path) -> jaxtok.decode.Model``.

``load("smollm2-135m")`` (a registered name, jaxtok.models.registry), ``load("x.gguf")`` or
``load("hf_model_dir/")`` return a :class:`jaxtok.decode.Model` for ``jaxtok.decode`` (its
``cfg``, its parameters, and ``tokenizer``: the tokenizer read from the same file, None when a
HF directory has no ``tokenizer.json``; ``defn.source`` / ``defn.metadata``: the file and its
header).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from jaxtok.decode.model import Model, ModelDef
from jaxtok.models.llama import CheckpointError

__all__ = ["CheckpointError", "load"]


def load(name_or_path: str | os.PathLike, *, dtype: Literal["float32", "bfloat16"] = "float32",
         max_len: int | None = None, tokenizer: bool = True) -> Model:
  """Loads a pretrained Llama-family model and its tokenizer.

  Args:
    name_or_path: a registered name (``"smollm2-135m"``), a ``.gguf`` file, or a directory with
      ``config.json`` and ``*.safetensors``.
    dtype: compute dtype and weight storage dtype (norm scales stay fp32).
    max_len: default KV-cache capacity (the model's context length when None).
    tokenizer: also build the tokenizer.
  """
  from jaxtok.models import gguf_loader, hf_loader, llama, registry

  if dtype not in ("float32", "bfloat16"):
    raise ValueError(f"dtype: expected 'float32' or 'bfloat16', got {dtype!r}")
  path = Path(name_or_path)
  if str(name_or_path) == registry.RANDOM_TINY and not path.exists():
    return registry.random_tiny(max_len=max_len or 1024, dtype=dtype)
  if not path.exists():
    if os.sep in str(name_or_path) or str(name_or_path).endswith((".gguf", ".safetensors")):
      raise FileNotFoundError(f"name_or_path: {name_or_path} does not exist")
    path = registry.resolve(str(name_or_path))
  tok = None
  if path.is_dir():
    cfg, tensors, meta = hf_loader.read_hf_dir(path, dtype=dtype, max_len=max_len)
    if tokenizer and (path / "tokenizer.json").is_file():
      from jaxtok.tokenize.pretrained import PretrainedTokenizer
      tok = PretrainedTokenizer.from_hf_dir(path)
  else:
    if path.suffix == ".safetensors":
      raise CheckpointError(f"{path}: pass the model directory (with config.json), not one "
                            ".safetensors file")
    cfg, tensors, meta = gguf_loader.read_gguf(path, dtype=dtype, max_len=max_len)
    if tokenizer and "tokenizer.ggml.tokens" in meta:
      from jaxtok.tokenize.pretrained import PretrainedTokenizer
      tok = PretrainedTokenizer.from_gguf_fields(gguf_loader.tokenizer_fields(meta),
                                                 source=str(path))
  pure = llama.params_from_hf(tensors, cfg, source=str(path))
  del tensors
  graphdef, params = llama.build(cfg, pure)
  return Model(defn=ModelDef(graphdef, cfg, tokenizer=tok, source=path, metadata=meta),
               params=params)
