"""Transformer building blocks (one configurable model, see DESIGN.md decision 3)."""
from jaxtok.nn.config import ModelConfig
from jaxtok.nn.transformer import Transformer, default_positions, forward, init_model

__all__ = ["ModelConfig", "Transformer", "default_positions", "forward", "init_model"]
