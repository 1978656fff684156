"""The permutation experiment (arXiv 2509.24125) runs end to end on its smoke preset."""
import json

from jaxtok_experiments import runner


def test_smoke_preset_writes_claims_and_figure(tmp_path):
  results = runner.run_experiment("permutation", "smoke", (), tmp_path)
  run_dir = tmp_path / "permutation" / "smoke"
  claims = {c["id"]: c for c in json.loads((run_dir / "results.json").read_text())["claims"]}
  assert len(claims) == len(results["claims"])
  for c in claims.values():
    assert {"id", "paper", "statement", "paper_value", "ours", "criterion", "passed"} <= set(c)
  # Exact at any size: the hand construction inverts, and no causal run beats the bound.
  for cid in ("hand-construction-unmasked", "hand-construction-scratch",
              "hand-construction-causal-at-bound", "vector-causal-at-bound",
              "tokens-causal-at-bound"):
    assert claims[cid]["passed"], claims[cid]
  assert {"tokens-prefix-inverts", "tokens-scratch4-inverts"} <= set(claims)
  assert (run_dir / "permutation_curves.png").stat().st_size > 0
  summary = json.loads((run_dir / "summary.json").read_text())
  assert set(summary["vector"]["variants"]) == {"causal", "unmasked", "scratch"}
  assert set(summary["tokens"]["variants"]) == {"causal", "prefix", "scratch4"}
  assert summary["vector"]["bound"] == 0.25 * 4 * 3 / 2
