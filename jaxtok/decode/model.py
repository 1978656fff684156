"""The model handle every engine function takes: a static definition and its parameters.

``ModelDef`` is the static half (the NNX graph definition and the config). It is hashed and
compared by identity, so a jit keyed on it (as the static part of a ``Model`` pytree) costs
nothing per call: hashing an NNX GraphDef structurally took ~40 ms per call on the 30-layer
SmolLM2 (the old host speculative loop's measurement). ``Model`` is a pytree whose only leaves
are the parameters, so ``jax.jit(f)(model, ...)`` traces once per definition and the weights
stay arguments (closed-over weights would become compile-time constants).

``models.load``, ``train.loop.train`` and ``ckpt.load_params`` all return a ``Model``
(flax's ``01_functional_api`` pattern: split once, pass the state, merge inside the trace).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from flax import nnx, struct



@dataclasses.dataclass(frozen=True, eq=False)
class ModelDef:
  """Static half of a model: its NNX graph definition and config (identity hash and eq), and,
  for a pretrained model, the tokenizer read from the same file, the file and its metadata."""
  graphdef: nnx.GraphDef
  cfg: Any  # a ModelConfig for the Transformer; another module's own config (VectorConfig)
  tokenizer: Any = None  # jaxtok.tokenize.pretrained.PretrainedTokenizer | None
  source: Path | None = None
  metadata: dict = dataclasses.field(default_factory=dict, repr=False)

  def merge(self, params) -> nnx.Module:
    """The module with ``params`` (inside a trace: no copy)."""
    return nnx.merge(self.graphdef, params)


@struct.dataclass
class Model:
  """A model's definition (static) and its parameters (the pytree's only leaves)."""
  defn: ModelDef = struct.field(pytree_node=False)
  params: Any  # nnx.State of nnx.Param

  @property
  def cfg(self) -> Any:
    return self.defn.cfg

  @property
  def graphdef(self) -> nnx.GraphDef:
    return self.defn.graphdef

  @property
  def tokenizer(self):
    return self.defn.tokenizer

  @classmethod
  def from_module(cls, module: nnx.Module) -> Model:
    """Splits ``module`` (a Transformer, or any module with a ``cfg``) once into a Model."""
    graphdef, params = nnx.split(module, nnx.Param)
    return cls(defn=ModelDef(graphdef, module.cfg), params=params)

  def with_params(self, params) -> Model:
    """The same definition (no recompile) with other parameters."""
    return Model(defn=self.defn, params=params)
