"""The speculative experiment (smoke preset) and ``jaxtok bench speculative --smoke`` run end to
end on a tiny random model; every drafter's output equals greedy."""
import json

from jaxtok_experiments import bench_speculative, runner

ROW_KEYS = {"drafter", "workload", "tree_nodes", "mat", "acceptance_rate", "tokens_per_s",
            "speedup_vs_greedy", "lossless"}


def test_smoke_experiment_and_bench(tmp_path):
  results = runner.run_experiment("speculative", "smoke", (), tmp_path)
  run_dir = tmp_path / "speculative" / "smoke"
  claims = {c["id"]: c for c in json.loads((run_dir / "results.json").read_text())["claims"]}
  assert len(claims) == len(results["claims"]) == 8
  for c in claims.values():
    assert set(c) == {"id", "paper", "statement", "paper_value", "ours", "criterion", "passed"}
  assert claims["lossless-greedy"]["passed"]
  for fig in ("mat_by_workload.png", "speedup_vs_nodes.png"):
    assert (run_dir / fig).stat().st_size > 0
  out = tmp_path / "bench.json"
  assert bench_speculative.main(["--smoke", "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert {r["workload"] for r in rows} == {"code", "agentic", "chat"}
  for r in rows:
    assert ROW_KEYS <= set(r) and r["lossless"] and r["mat"] >= 1
