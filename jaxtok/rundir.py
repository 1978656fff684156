"""One run per directory: an exclusive lock for a run's lifetime, and no run writes into another
run's files (issue 15).

``hold(directory)`` takes a ``flock`` on ``directory/.lock``: a second run into the same
directory fails at once and names the holder (pid, host, start time). The kernel drops the lock
when the holder dies, even by SIGKILL, so a stale lock never blocks a resume. Holding is
re-entrant within a process (the runner holds the run directory, the trainer its
sub-directory or the same one). Only process 0 locks and writes; on a pod every process computes
the same results (``jaxtok.runtime``).
"""
from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
from pathlib import Path
from typing import Iterator

LOCK_NAME = ".lock"
_held: dict[str, list] = {}  # absolute directory -> [file descriptor, depth]


class RunDirError(ValueError):
  """A run directory is in use by another run, or holds another run's files."""


def run_files(directory: str | Path) -> list[str]:
  """Names of the entries in ``directory`` other than its lock file (empty if it is absent)."""
  d = Path(directory)
  if not d.is_dir():
    return []
  return sorted(p.name for p in d.iterdir() if p.name != LOCK_NAME)


def holder(directory: str | Path) -> str:
  """Who holds (or last held) the lock, in words."""
  try:
    info = json.loads((Path(directory) / LOCK_NAME).read_text() or "{}")
  except (OSError, ValueError):
    return "an unknown process"
  return (f"pid {info.get('pid', '?')} on {info.get('host', '?')}, started "
          f"{info.get('started', '?')}")


def _is_main() -> bool:
  from jaxtok import runtime
  return runtime.is_main_process()


@contextlib.contextmanager
def hold(directory: str | Path) -> Iterator[Path]:
  """Holds ``directory`` exclusively for the duration of the block (creating it)."""
  d = Path(directory).absolute()
  key = str(d)
  if key in _held:
    _held[key][1] += 1
    try:
      yield d
    finally:
      _held[key][1] -= 1
    return
  if not _is_main():
    yield d
    return
  d.mkdir(parents=True, exist_ok=True)
  fd = os.open(d / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError as e:
    os.close(fd)
    if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
      raise RunDirError(f"{d} is in use by another run ({holder(d)}); wait for it to finish or "
                        f"write elsewhere with --out") from None
    raise
  started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
  os.ftruncate(fd, 0)
  os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                           "started": started}).encode())
  _held[key] = [fd, 1]
  try:
    yield d
  finally:
    _held[key][1] -= 1
    if _held[key][1] == 0:
      del _held[key]
      fcntl.flock(fd, fcntl.LOCK_UN)
      os.close(fd)


def is_held(directory: str | Path) -> bool:
  """Whether this process holds ``directory`` (or a directory above it)."""
  d = Path(directory).absolute()
  return any(d == Path(k) or Path(k) in d.parents for k in _held)


def label(directory: str | Path) -> str:
  """A short name for progress bars: ``exp/preset[/sub]`` from the outermost held directory."""
  d = Path(directory).absolute()
  roots = [Path(k) for k in _held if d == Path(k) or Path(k) in d.parents]
  root = min(roots, key=lambda r: len(r.parts)) if roots else d
  return "/".join([root.parent.name, root.name, *d.relative_to(root).parts])


def clear(directory: str | Path) -> list[str]:
  """Removes every entry but the lock file; the caller must hold the directory."""
  d = Path(directory)
  if not is_held(d) and _is_main():
    raise RunDirError(f"{d}: refusing to clear a run directory this process does not hold")
  removed = run_files(d)
  for name in removed:
    p = d / name
    if p.is_dir() and not p.is_symlink():
      shutil.rmtree(p)
    else:
      p.unlink()
  return removed
