"""Pretrained Llama-family checkpoints: ``load(name_or_path) -> LoadedModel``.

``load("smollm2-135m")`` (a registered name, jaxtok.models.registry), ``load("x.gguf")`` or
``load("hf_model_dir/")`` return a :class:`LoadedModel` with the ModelConfig, the NNX graphdef and
parameter state for ``jaxtok.nn.transformer.forward`` / ``jaxtok.decode.generate``, and the
tokenizer read from the same file (None when a HF directory has no ``tokenizer.json``).
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, Literal

from jaxtok.models.llama import CheckpointError
from jaxtok.nn.config import ModelConfig

__all__ = ["CheckpointError", "LoadedModel", "load"]


@dataclasses.dataclass(frozen=True, eq=False)
class LoadedModel:
  cfg: ModelConfig
  graphdef: Any  # nnx.GraphDef
  params: Any  # nnx.State
  tokenizer: Any  # jaxtok.tokenize.pretrained.PretrainedTokenizer | None
  source: Path
  metadata: dict = dataclasses.field(default_factory=dict, repr=False)

  def __iter__(self):  # cfg, graphdef, params = load(...)
    return iter((self.cfg, self.graphdef, self.params))


def load(name_or_path: str | os.PathLike, *, dtype: Literal["float32", "bfloat16"] = "float32",
         max_len: int | None = None, tokenizer: bool = True) -> LoadedModel:
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
  return LoadedModel(cfg=cfg, graphdef=graphdef, params=params, tokenizer=tok, source=path,
                     metadata=meta)
