"""Multi-host runtime: one call before any other JAX work, logging on process 0 only.

``initialize()`` calls ``jax.distributed.initialize()`` when the environment describes a
multi-process run (a TPU pod slice, or JAX_COORDINATOR_ADDRESS/JAX_NUM_PROCESSES set), and is a
no-op on a laptop. Nothing here touches JAX at import time.
"""
from __future__ import annotations

import logging
import os

_initialized = False


def _multi_process_env() -> bool:
  if os.environ.get("JAX_COORDINATOR_ADDRESS") or int(os.environ.get("JAX_NUM_PROCESSES", "1")) > 1:
    return True
  # Cloud TPU VMs list every worker of the slice; one hostname means a single host.
  hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
  return len([h for h in hosts.split(",") if h]) > 1


def initialize(force_distributed: bool | None = None) -> None:
  global _initialized
  if _initialized:
    return
  distributed = _multi_process_env() if force_distributed is None else force_distributed
  if distributed:
    import jax
    jax.distributed.initialize()
  _initialized = True
  if not is_main_process():
    logging.getLogger().setLevel(logging.WARNING)


def is_main_process() -> bool:
  import jax
  return jax.process_index() == 0


def log(msg: str) -> None:
  """Prints on process 0 only (every process runs the same script on a pod)."""
  if is_main_process():
    print(msg, flush=True)
