"""The nar experiment runs end to end on its smoke preset and writes its claims and figures."""
import json

from jaxtok_experiments import runner


def test_smoke_preset_writes_claims_samples_and_speed(tmp_path):
  results = runner.run_experiment("nar", "smoke", (), tmp_path)
  run_dir = tmp_path / "nar" / "smoke"
  claims = {c["id"]: c for c in json.loads((run_dir / "results.json").read_text())["claims"]}
  assert len(claims) == len(results["claims"])
  for c in claims.values():
    assert set(c) == {"id", "paper", "statement", "paper_value", "ours", "criterion", "passed"}
  assert claims["nar-steps-8"]["passed"] and claims["nar-steps-8"]["ours"] == 15  # exact
  for cid in ("nar-field-entropy", "nar-mixed-heads", "nar-negative-control", "nar-digits8-nll",
              "nar-digits8-samples", "nar-speedup-8-b16"):
    assert cid in claims  # learned / timed claims are only reported at smoke size
  summary = json.loads((run_dir / "summary.json").read_text())
  f = summary["field"]
  assert abs(f["field"]["nar_bound"] - f["field"]["entropy"]) < 1e-9  # NAR is exact there
  assert f["control"]["nar_bound"] > f["control"]["entropy"]  # and loses on the control
  speed = {(r["order"], r["batch"]): r for r in summary["speed"]}
  assert speed[("nar", 16)]["forward_passes"] == 15 and speed[("raster", 16)]["forward_passes"] == 64
  for kind in ("nar", "raster"):
    assert (run_dir / f"digits8_{kind}_samples.png").stat().st_size > 0
