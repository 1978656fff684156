"""The lexinvariant experiment runs end to end on its smoke preset (claims, figures, curves)."""
import json

import numpy as np

from jaxtok_experiments import runner


def test_smoke_preset_writes_claims_curves_and_figures(tmp_path):
  results = runner.run_experiment("lexinvariant", "smoke", (), tmp_path)
  run_dir = tmp_path / "lexinvariant" / "smoke"
  claims = json.loads((run_dir / "results.json").read_text())["claims"]
  assert len(claims) == len(results["claims"]) == 11
  for c in claims:
    assert set(c) == {"id", "paper", "statement", "paper_value", "ours", "criterion", "passed"}
  for fig in ("markov_loss_by_position", "code_loss_by_position", "decipher_accuracy",
              "lookup_accuracy"):
    assert (run_dir / f"{fig}.png").stat().st_size > 0
  summary = json.loads((run_dir / "summary.json").read_text())
  t = 32  # smoke seq_len
  for name in ("standard", "lexinvariant", "bayes_lexinvariant", "known_cipher"):
    assert len(summary["markov"][name]) == t and np.all(np.isfinite(summary["markov"][name]))
  # The exact Bayes predictor starts at the cost of the first transition under a uniform
  # relabelling and never beats the true source model on average.
  bayes, known = np.array(summary["markov"]["bayes_lexinvariant"]), np.array(
      summary["markov"]["known_cipher"])
  assert bayes.mean() >= known.mean()
  acc = np.array(summary["decipher"]["bayes_map"])
  assert acc.shape == (t,) and np.all((0 <= acc) & (acc <= 1))
