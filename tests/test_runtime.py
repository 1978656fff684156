import subprocess
import sys

MODULES = ["jaxtok", "jaxtok.nn", "jaxtok.cache", "jaxtok.decode", "jaxtok.train.loop",
           "jaxtok.data.pipeline", "jaxtok.data.stdlib", "jaxtok.ckpt", "jaxtok.sharding",
           "jaxtok.runtime", "jaxtok.cli", "jaxtok.cli.aot", "jaxtok.cli.generate",
           "jaxtok.models", "jaxtok.tokenize",
           "jaxtok_kernels", "jaxtok_experiments.runner", "jaxtok_experiments.lm"]


def test_no_jax_backend_is_initialised_at_import():
  """Importing jaxtok must not start a backend: jax.distributed.initialize() has to come first."""
  code = ("import importlib, sys\n"
          f"for m in {MODULES!r}: importlib.import_module(m)\n"
          "from jax._src import xla_bridge\n"
          "sys.exit(1 if xla_bridge.backends_are_initialized() else 0)\n")
  proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr[-2000:]


def test_single_process_initialize_is_a_no_op(monkeypatch):
  from jaxtok import runtime
  monkeypatch.delenv("JAX_COORDINATOR_ADDRESS", raising=False)
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "localhost")
  assert not runtime._multi_process_env()
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "10.0.0.1,10.0.0.2")
  assert runtime._multi_process_env()
