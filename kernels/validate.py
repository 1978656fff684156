"""Helpers of the operand validators (each op's ``layout.validate_inputs``): the broadcast rule
of masks, and range checks of integer operands whose values are known at trace time."""
from __future__ import annotations

import jax
import numpy as np


def broadcastable(shape, target) -> bool:
  """``shape`` broadcasts to ``target`` (numpy rules: trailing axes equal or 1)."""
  if len(shape) > len(target):
    return False
  return all(a in (1, t) for a, t in zip(shape[::-1], target[::-1]))


def concrete_int_array(x) -> np.ndarray | None:
  """`x` as a numpy int array when its value is known (not a tracer), else None: a traced value
  cannot be range-checked."""
  if isinstance(x, jax.core.Tracer):
    return None
  try:
    return np.asarray(x)
  except Exception:  # noqa: BLE001 - abstract values that escape the Tracer check
    return None
