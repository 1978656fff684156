import json

from jaxtok.cli import main

TINY = ["model.d_model=32", "model.n_heads=2", "model.d_ff=64", "model.n_layers=1",
        "data.max_train_bytes=200000", "data.max_val_bytes=20000", "train.steps=5",
        "train.warmup_steps=1", "train.progress=false", "mesh.data=1"]


def test_run_writes_a_valid_results_json(tmp_path, capsys):
  args = ["run", "lm", "--preset", "smoke", "--out", str(tmp_path)]
  assert main(args + sum((["--set", s] for s in TINY), [])) == 0
  run_dir = tmp_path / "lm" / "smoke"
  results = json.loads((run_dir / "results.json").read_text())
  keys = {"id", "paper", "statement", "paper_value", "ours", "criterion", "passed"}
  assert results["claims"] and all(set(c) == keys for c in results["claims"])
  assert all(isinstance(c["passed"], bool) for c in results["claims"])
  assert json.loads((run_dir / "config.json").read_text())["train"]["steps"] == 5
  assert (run_dir / "loss_curve.png").stat().st_size > 1000
  assert len((run_dir / "metrics.jsonl").read_text().splitlines()) >= 2
  assert "['embed']" in (run_dir / "sharding.txt").read_text()


def test_reproduce_writes_a_report(tmp_path):
  from jaxtok_experiments import runner
  results = runner.run_experiment("lm", "smoke", TINY, tmp_path)
  report = runner.write_report([results], tmp_path).read_text()
  assert "| lm | lm-beats-unigram |" in report and "loss_curve" in report
  row = next(l for l in report.splitlines() if l.startswith("| lm | lm-beats-unigram |"))
  assert "| our baseline |" in row and "| bits/byte |" in row
  runs = next(l for l in report.splitlines() if l.startswith("| lm | smoke |"))
  assert "| 5 |" in runs and results["context"]["commit"] in runs  # steps, commit
  assert results["context"]["trainings"][0]["params"] > 0


def test_bad_cli_input_is_a_clear_error(capsys):
  assert main(["run", "lm", "--preset", "smoke", "--set", "train.nope=1"]) == 2
  assert "unknown config key 'train.nope'" in capsys.readouterr().err
  assert main(["run", "nope"]) == 2
  assert "unknown experiment" in capsys.readouterr().err
  assert main(["list"]) == 0
  assert "lm" in capsys.readouterr().out
