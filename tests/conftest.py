"""Test session set-up: 8 fake CPU devices (before JAX initialises), fp32 matmuls, no x64,
rank promotion raises (a silent broadcast of mismatched ranks is a bug), and the jaxtyping
annotations of the engine (jaxtok.decode) are checked at run time (beartype through jaxtyping's import
hook, installed before any jaxtok import)."""
import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
jax.config.update("jax_numpy_rank_promotion", "raise")

from jaxtyping import install_import_hook  # noqa: E402

# The engine's public functions and structs are shape-checked (as gemma checks its sampler
# step); the hook on every eager cache / nn call cost ~40% of those tests' time.
install_import_hook(["jaxtok.decode"], "beartype.beartype")
