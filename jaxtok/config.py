"""Typed, frozen experiment configs with ``--set a.b=v`` overrides.

Every config part is a ``@dataclass(frozen=True, kw_only=True)``; validation lives in
``__post_init__`` and raises ``ConfigError`` naming the field. Overrides are parsed against the
field's declared type, so ``--set train.steps=-1`` or ``--set model.nope=3`` fail at parse time.
"""
from __future__ import annotations

import dataclasses
import json
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
  """A config value is invalid; the message names the field."""


def require(ok: bool, field: str, expected: str, got: Any) -> None:
  if not ok:
    raise ConfigError(f"{field}: expected {expected}, got {got!r}")


def _parse_value(text: str, tp: Any, field: str) -> Any:
  origin = typing.get_origin(tp)
  args = typing.get_args(tp)
  if origin in (typing.Union, types.UnionType):
    if text.lower() in ("none", "null") and type(None) in args:
      return None
    errors = []
    for arg in args:
      if arg is type(None):
        continue
      try:
        return _parse_value(text, arg, field)
      except ConfigError as e:
        errors.append(str(e))
    raise ConfigError(f"{field}: cannot parse {text!r} as {tp}: {'; '.join(errors)}")
  if origin is typing.Literal:
    for choice in args:
      if str(choice) == text:
        return choice
    raise ConfigError(f"{field}: expected one of {list(args)}, got {text!r}")
  if origin is tuple:
    parts = [p for p in text.strip("()[]").split(",") if p.strip()]
    inner = args[0] if args else str
    return tuple(_parse_value(p.strip(), inner, field) for p in parts)
  if tp is bool:
    if text.lower() in ("1", "true", "yes"):
      return True
    if text.lower() in ("0", "false", "no"):
      return False
    raise ConfigError(f"{field}: expected a bool (true/false), got {text!r}")
  if tp in (int, float):
    try:
      return tp(text)
    except ValueError:
      raise ConfigError(f"{field}: expected {tp.__name__}, got {text!r}") from None
  if tp is str:
    return text
  raise ConfigError(f"{field}: cannot override a field of type {tp}")


def _apply(node: Any, assignments: list[tuple[list[str], str]], prefix: str) -> Any:
  hints = typing.get_type_hints(type(node))
  fields = {f.name for f in dataclasses.fields(node)}
  direct: dict[str, Any] = {}
  nested: dict[str, list[tuple[list[str], str]]] = {}
  for names, text in assignments:
    name, full = names[0], f"{prefix}{names[0]}"
    if name not in fields:
      raise ConfigError(f"unknown config key {full!r}; valid keys here: {sorted(fields)}")
    if len(names) == 1:
      direct[name] = _parse_value(text, hints[name], full)
    elif not dataclasses.is_dataclass(getattr(node, name)):
      raise ConfigError(f"{full!r} is a value, not a config section")
    else:
      nested.setdefault(name, []).append((names[1:], text))
  for name, sub in nested.items():
    direct[name] = _apply(getattr(node, name), sub, f"{prefix}{name}.")
  # One rebuild per section, so cross-field checks see all new values at once.
  return dataclasses.replace(node, **direct) if direct else node


def apply_overrides(cfg: T, assignments: list[str] | tuple[str, ...]) -> T:
  """Returns ``cfg`` with ``a.b.c=value`` assignments applied, then validated."""
  parsed = []
  for a in assignments:
    if "=" not in a:
      raise ConfigError(f"--set expects key=value, got {a!r}")
    key, text = a.split("=", 1)
    parsed.append((key.strip().split("."), text.strip()))
  return _apply(cfg, parsed, "")


def to_dict(cfg: Any) -> dict:
  return dataclasses.asdict(cfg)


def from_dict(cls: type[T], data: dict) -> T:
  """Rebuilds a (nested) config dataclass from ``to_dict`` output, validating every field."""
  hints = typing.get_type_hints(cls)
  kwargs = {}
  for f in dataclasses.fields(cls):
    if f.name not in data:
      continue
    value, tp = data[f.name], hints[f.name]
    if dataclasses.is_dataclass(tp):
      value = from_dict(tp, value)
    elif typing.get_origin(tp) is tuple and value is not None:
      value = tuple(value)
    kwargs[f.name] = value
  return cls(**kwargs)


def diff(a: Any, b: Any, prefix: str = "") -> list[str]:
  """Human-readable list of fields that differ between two configs of the same type."""
  out = []
  for f in dataclasses.fields(a):
    x, y = getattr(a, f.name), getattr(b, f.name)
    if dataclasses.is_dataclass(x):
      out += diff(x, y, f"{prefix}{f.name}.")
    elif x != y:
      out.append(f"{prefix}{f.name}: {json.dumps(x)} != {json.dumps(y)}")
  return out
