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
  assert len(claims) == len(results["claims"]) == 9
  for c in claims.values():
    assert set(c) == {"id", "paper", "statement", "paper_value", "ours", "criterion", "passed"}
  assert claims["lossless-greedy"]["passed"]
  # no transformers checkpoint for the tiny model: the HF claims say why and do not pass
  for cid in ("speedup-above-hf-pld", "tokens-per-s-above-hf-pld"):
    assert "skipped" in claims[cid]["ours"] and not claims[cid]["passed"]
  for fig in ("mat_by_workload.png", "speedup_vs_nodes.png"):
    assert (run_dir / fig).stat().st_size > 0
  out = tmp_path / "bench.json"
  assert bench_speculative.main(["--smoke", "--repeats", "2", "--out", str(out)]) == 0
  rows = json.loads(out.read_text())["rows"]
  assert {r["workload"] for r in rows} == {"code", "agentic", "chat"}
  for r in rows:
    assert ROW_KEYS <= set(r) and r["lossless"] and r["mat"] >= 1


def test_hf_columns_and_claims():
  """transformers' numbers (as ``hf_summary`` returns them) become per-row speed-ups, table
  columns and the two claims, computed from the rows (no torch needed)."""
  from jaxtok_experiments import speculative as exp

  hf = {"torch": "x", "transformers": "y", "threads": 2, "workloads": {
      "code": {"greedy_tokens_per_s": 10.0, "pld_tokens_per_s": 12.0, "pld_speedup": 1.2,
               "greedy_equals_ours": 2, "pld_equals_ours": 2, "requests": 2}}}
  base = dict(tree_nodes=4, acceptance_rate=0.5, greedy_tokens_per_s=20.0, lossless=True,
              cpu_time_speedup=1.0, workload="code")
  rows = [dict(base, drafter="a", mat=2.0, tokens_per_s=30.0, speedup_vs_greedy=1.5),
          dict(base, drafter="b", mat=1.5, tokens_per_s=22.0, speedup_vs_greedy=1.1),
          dict(base, drafter="a", mat=2.0, tokens_per_s=9.0, speedup_vs_greedy=1.1,
               workload="chat")]
  exp.add_hf(rows, hf)
  assert rows[0]["speedup_vs_hf_pld"] == 2.5 and rows[1]["speedup_vs_hf_greedy"] == 2.2
  assert "hf_pld_tokens_per_s" not in rows[2]
  lines = exp.table_lines(rows, hf)
  assert "vs HF PLD" in lines[0] and "2.50x" in lines[2] and "- | - |" in lines[4]
  assert any(ln.startswith("| code | 10.0 | 12.0 | 1.20x | 2/2 |") for ln in lines)
  speed, tps = bench_speculative.hf_claims(rows, hf)
  assert speed.passed and speed.ours["code"]["drafter"] == "a" and tps.passed
  rows[0]["speedup_vs_greedy"] = 1.19  # below HF PLD's 1.2x: must fail
  assert not bench_speculative.hf_claims(rows, hf)[0].passed
