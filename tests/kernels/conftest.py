"""Shared fixtures for the kernel tests: random tree-attention inputs."""
import pytest

from jaxtok_kernels.tree_attention.sample_inputs import random_inputs


@pytest.fixture(name="make_inputs")
def _make_inputs_fixture():
  return random_inputs
