"""The runner's run-directory rules and the report (issue 15), on a fake experiment that trains
nothing, so each case takes milliseconds; the real trainer's cases are in tests/train."""
import dataclasses
import json
import subprocess
import sys
import types

import pytest

from jaxtok.ckpt import CheckpointError
from jaxtok.cli import main
from jaxtok.config import ConfigError
from jaxtok.rundir import RunDirError
from jaxtok.train.config import TrainConfig
from jaxtok_experiments import EXPERIMENTS, runner


@dataclasses.dataclass(frozen=True, kw_only=True)
class FakeConfig:
  value: int = 1
  fail: str = ""  # "": pass; "value": raise ValueError; "os": a full disk; "bug": RuntimeError
  train: TrainConfig = TrainConfig(steps=2, warmup_steps=0)


def _fake_module(calls: list):
  mod = types.ModuleType("jaxtok_fake_experiment")
  mod.PRESETS = {"smoke": FakeConfig, "cpu": FakeConfig}
  mod.BUDGETS = {"smoke": 5}

  def run(cfg, out_dir, resume=False):
    calls.append((out_dir, cfg, resume))
    if cfg.fail == "value":
      raise ValueError("bad input")
    if cfg.fail == "os":
      raise OSError(28, "No space left on device", str(out_dir / "metrics.jsonl"))
    if cfg.fail == "bug":
      raise RuntimeError("something broke\n" + "frame\n" * 100)
    (out_dir / "fake.txt").write_text(str(cfg.value))
    return [runner.Claim("fake-claim", "baseline", "value is positive", 0, cfg.value,
                         "ours > paper_value", cfg.value > 0, unit="widgets")]

  mod.run = run
  return mod


@pytest.fixture
def fake(monkeypatch):
  calls = []
  monkeypatch.setitem(sys.modules, "jaxtok_fake_experiment", _fake_module(calls))
  monkeypatch.setitem(EXPERIMENTS, "fake", "jaxtok_fake_experiment")
  monkeypatch.setitem(EXPERIMENTS, "fake2", "jaxtok_fake_experiment")
  return calls


def _snapshot(d):
  return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*"))
          if p.is_file() and p.name != ".lock"}


def test_one_run_per_directory(tmp_path, fake):
  run_dir = tmp_path / "fake" / "smoke"
  runner.run_experiment("fake", "smoke", ["value=3"], tmp_path)
  before = _snapshot(run_dir)
  assert json.loads(before["config.json"])["value"] == 3 and "results.json" in before

  with pytest.raises(RunDirError, match="already holds a run .*--resume.*--overwrite"):
    runner.run_experiment("fake", "smoke", ["value=4"], tmp_path)
  # A rejected resume names the field and leaves config.json (and everything else) as it was.
  with pytest.raises(CheckpointError, match="value: checkpoint has 3, config has 4"):
    runner.run_experiment("fake", "smoke", ["value=4"], tmp_path, resume=True)
  # An invalid value fails before anything is written.
  with pytest.raises(ConfigError, match="train.steps"):
    runner.run_experiment("fake", "smoke", ["train.steps=0"], tmp_path, overwrite=True)
  assert _snapshot(run_dir) == before and len(fake) == 1

  # Resuming a finished run says so and changes nothing.
  out = runner.run_experiment("fake", "smoke", [], tmp_path, resume=True)
  assert out == json.loads(before["results.json"]) and len(fake) == 1
  assert _snapshot(run_dir) == before
  # --resume continues from the run's own config (value=3), and may extend train.steps.
  runner.run_experiment("fake", "smoke", ["train.steps=5"], tmp_path, resume=True)
  assert fake[-1][1].value == 3 and fake[-1][1].train.steps == 5 and fake[-1][2] is True

  (run_dir / "stale.png").write_text("old figure")
  runner.run_experiment("fake", "smoke", ["value=7"], tmp_path, overwrite=True)
  assert not (run_dir / "stale.png").exists() and (run_dir / "fake.txt").read_text() == "7"
  with pytest.raises(RunDirError, match="holds no run to resume"):
    runner.run_experiment("fake", "cpu", [], tmp_path, resume=True)
  assert not (tmp_path / "fake" / "cpu").exists()


def test_a_second_run_into_a_held_directory_fails_at_once_naming_the_holder(tmp_path, fake,
                                                                         capsys):
  run_dir = tmp_path / "fake" / "smoke"
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time; from jaxtok import rundir\n"
       "with rundir.hold(sys.argv[1]):\n  print('held', flush=True); time.sleep(60)",
       str(run_dir)], stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    for flags in ([], ["--overwrite"]):
      assert main(["run", "fake", "--preset", "smoke", "--out", str(tmp_path), *flags]) == 2
      err = capsys.readouterr().err
      assert f"is in use by another run (pid {holder.pid}" in err, err
    assert fake == [] and [p.name for p in run_dir.iterdir()] == [".lock"]
  finally:
    holder.kill()
    holder.wait()
  # The kernel released the killed holder's lock: the directory is usable again.
  assert main(["run", "fake", "--preset", "smoke", "--out", str(tmp_path)]) == 0


def test_reproduce_reports_after_each_experiment_and_keeps_going(tmp_path, fake, capsys,
                                                                 monkeypatch):
  seen = []
  fake_run = sys.modules["jaxtok_fake_experiment"].run

  def run(cfg, out_dir, resume=False):
    # The second experiment starts with the first one already in the report.
    seen.append((tmp_path / "report.md").read_text() if (tmp_path / "report.md").exists()
                else None)
    if out_dir.parent.name == "fake2":
      cfg = dataclasses.replace(cfg, fail="bug")
    return fake_run(cfg, out_dir, resume)

  monkeypatch.setattr(sys.modules["jaxtok_fake_experiment"], "run", run)
  with pytest.raises(RuntimeError, match="1 of 2 experiments failed .*fake2"):
    runner.reproduce("smoke", tmp_path, ["fake", "fake2"])
  assert seen[0] is None and "| fake | fake-claim |" in seen[1]
  out = capsys.readouterr().out
  assert "[1/2] fake --preset smoke (budget 5 s): running" in out
  assert "[1/2] fake done in" in out and "1/1 claims passed" in out
  assert "[2/2] fake2 done in" in out and "failed: RuntimeError: something broke" in out
  report = (tmp_path / "report.md").read_text()
  assert "| reference | reference value | ours | unit |" in report
  assert "| fake | fake-claim | value is positive | our baseline | 0 | 1 | widgets |" in report
  assert "the run failed: RuntimeError: something broke" in report
  assert "paper value" not in report
  runs = report.split("## Runs")[1]
  assert "| fake | smoke |" in runs and "cpu" in runs  # commit, date and hardware columns

  # A second reproduce refuses to mix into the first; --resume keeps what finished.
  with pytest.raises(RunDirError, match="already hold runs"):
    runner.reproduce("smoke", tmp_path, ["fake"])
  monkeypatch.setattr(sys.modules["jaxtok_fake_experiment"], "run", fake_run)
  n = len(fake)
  runner.reproduce("smoke", tmp_path, ["fake", "fake2"], resume=True)
  assert len(fake) == n + 1  # fake was finished and is kept; fake2 failed and is rerun


def test_errors_are_one_line_with_a_hint(tmp_path, fake, capsys):
  base = ["run", "fake", "--preset", "smoke", "--out", str(tmp_path)]
  assert main(base + ["--set", "fail=bug"]) == 1
  err = capsys.readouterr().err.splitlines()
  assert err == ["jaxtok: error: RuntimeError: something broke",
                 "  hint: run again with --debug for the full traceback"]
  assert main(base + ["--overwrite", "--set", "fail=os"]) == 1
  err = capsys.readouterr().err.splitlines()
  assert err[0].startswith("--overwrite: removed the previous run")
  assert err[1].startswith("jaxtok: error: No space left on device: ") and len(err) == 3
  assert err[2] == ("  hint: free disk space, then continue with --resume (saved checkpoints "
                    "are intact)")
  with pytest.raises(RuntimeError, match="something broke"):
    main(base + ["--overwrite", "--set", "fail=bug", "--debug"])
  with pytest.raises(SystemExit):  # argparse: not both
    main(base + ["--resume", "--overwrite"])


def test_help_lists_every_subcommand(capsys):
  with pytest.raises(SystemExit):
    main(["--help"])
  out = capsys.readouterr().out
  for cmd in ("list", "run", "reproduce", "bench", "generate", "kernels", "aot"):
    assert f"    {cmd} " in out, cmd


def test_learned_positions_longer_than_the_table_fail_at_parse_time():
  with pytest.raises(ConfigError, match=r"data.seq_len: expected <= model.max_len=128 with "
                     r"model.positions='learned'"):
    runner.make_config("lm", "smoke", ["model.positions=learned", "data.seq_len=200"])
  runner.make_config("lm", "smoke", ["model.positions=learned", "data.seq_len=128"])
  runner.make_config("lm", "smoke", ["data.seq_len=200"])  # rope has no table
