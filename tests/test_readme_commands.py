"""Every command of the README's Commands block works as written (so the docs cannot drift).

Commands that need no accelerator run, shrunk: runs get tiny model/data/step overrides (same
presets and run directories, so resume finds its run), reproduce runs the smoke preset of `lm`
into its own directory, generation makes 2 tokens; commands that need an accelerator or the compile
side folders are parsed by their own argument parsers, which reject unknown arguments; the GPU
script is syntax-checked.
"""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.n_layers=1",
        "data.max_train_bytes=200000", "data.max_val_bytes=20000", "data.val_batches=1",
        "train.steps=3", "train.warmup_steps=1", "train.progress=false", "mesh.data=1"]


def readme_commands() -> list[list[str]]:
  text = (ROOT / "README.md").read_text()
  block = re.search(r"## Commands\s+```bash\n(.*?)```", text, re.S)
  assert block, "README.md has no ```bash block under '## Commands'"
  return [shlex.split(line, comments=True) for line in block.group(1).splitlines()
          if line.strip() and not line.lstrip().startswith("#")]


def _smoke_sized(argv: list[str], out: Path) -> list[str]:
  if argv[0] == "reproduce":
    argv = ["smoke" if a == "cpu" and argv[i - 1] == "--preset" else a
            for i, a in enumerate(argv)]
    out = out.parent / "reproduce"
  if "--out" in argv:
    argv[argv.index("--out") + 1] = str(out)
  else:
    argv += ["--out", str(out)]
  if argv[0] == "run":
    argv += sum((["--set", s] for s in TINY), [])
  if argv[0] == "reproduce":
    argv += ["--only", "lm"]
  return argv


def _jaxtok(argv):
  env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "--xla_force_host_platform_device_count=1"}
  return subprocess.run([sys.executable, "-m", "jaxtok.cli", *argv], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=600)


def _parse_only(argv: list[str]) -> None:
  if argv[0] == "kernels":
    assert argv[1] == "check", argv
    from jaxtok_kernels import check
    check.parser().parse_args(argv[2:])
  elif argv[0] == "aot":
    from jaxtok.cli import aot
    aot.parser().parse_args(argv[1:])
  else:
    raise AssertionError(f"no parser for {argv}")


def test_the_readme_commands_block(tmp_path):
  commands = readme_commands()
  assert len(commands) >= 10
  out = tmp_path / "runs"
  for cmd in commands:
    if cmd[0].startswith("OUT=") and cmd[1] == "bash":  # GPU script: needs a GPU
      subprocess.run(["bash", "-n", cmd[2]], cwd=ROOT, check=True)
      continue
    assert cmd[0] == "jaxtok", cmd
    argv = cmd[1:]
    if argv[0] in ("kernels", "aot"):
      try:
        _parse_only(argv)
      except SystemExit as e:
        pytest.fail(f"README command does not parse: {shlex.join(cmd)} (exit {e.code})")
      continue
    if argv[0] == "bench":
      argv = argv + ["--help"]
    elif argv[0] == "generate":
      argv = argv + ["--max-new-tokens", "2"]
    elif argv[0] in ("run", "reproduce"):
      argv = _smoke_sized(argv, out)
    proc = _jaxtok(argv)
    assert proc.returncode == 0, f"{shlex.join(cmd)} -> {shlex.join(argv)}:\n{proc.stderr[-3000:]}"
