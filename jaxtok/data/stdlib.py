"""The Python standard library's ``.py`` sources as a code corpus present on every machine.

Files are split into train/validation by a hash of their path relative to the stdlib root, so
the split is stable across machines and runs. Byte-level tokens: ids 0-255 are raw bytes; NUL
(never in source files) separates documents. Token arrays are cached as ``.npy``.
"""
from __future__ import annotations

import hashlib
import os
import sys
import sysconfig
from pathlib import Path

import numpy as np

SEPARATOR = 0
_EXCLUDED_DIRS = ("test", "tests", "idlelib", "site-packages", "lib2to3", "__pycache__")


def stdlib_root() -> Path:
  return Path(sysconfig.get_paths()["stdlib"])


def cache_dir() -> Path:
  path = Path(os.environ.get("JAXTOK_CACHE", Path.home() / ".cache" / "jaxtok"))
  path.mkdir(parents=True, exist_ok=True)
  return path


def split_of(relpath: str, val_fraction: float) -> str:
  h = int.from_bytes(hashlib.sha1(relpath.encode()).digest()[:8], "big") / 2**64
  return "val" if h < val_fraction else "train"


def files(split: str, val_fraction: float = 0.05) -> list[Path]:
  if split not in ("train", "val"):
    raise ValueError(f"split: expected 'train' or 'val', got {split!r}")
  root = stdlib_root()
  out = []
  for path in sorted(root.rglob("*.py")):
    rel = path.relative_to(root).as_posix()
    if any(part in _EXCLUDED_DIRS for part in path.relative_to(root).parts[:-1]):
      continue
    if split_of(rel, val_fraction) == split:
      out.append(path)
  return out


def documents(split: str, val_fraction: float = 0.05, max_bytes: int = 0) -> list[bytes]:
  docs, total = [], 0
  for path in files(split, val_fraction):
    data = path.read_bytes().replace(b"\0", b"")
    docs.append(data)
    total += len(data)
    if max_bytes and total >= max_bytes:
      break
  return docs


def byte_tokens(split: str, val_fraction: float = 0.05, max_bytes: int = 0) -> np.ndarray:
  """uint8 stream of the split's files joined by NUL separators (cached)."""
  key = f"stdlib-py{sys.version_info.major}{sys.version_info.minor}-{split}-{val_fraction}-{max_bytes}"
  path = cache_dir() / f"{key}.npy"
  if path.exists():
    return np.load(path)
  stream = bytes([SEPARATOR]).join(documents(split, val_fraction, max_bytes))
  tokens = np.frombuffer(stream, np.uint8).copy()
  tmp = path.with_suffix(".tmp.npy")
  np.save(tmp, tokens)
  tmp.replace(path)  # atomic: concurrent test workers never read a half-written cache
  return tokens
