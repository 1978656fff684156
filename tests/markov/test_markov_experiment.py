"""The markov-tokenization experiment runs end to end on its smoke preset."""
import json

from jaxtok_experiments import runner


def test_smoke_preset_writes_claims_and_figures(tmp_path):
  results = runner.run_experiment("markov-tokenization", "smoke", (), tmp_path)
  run_dir = tmp_path / "markov-tokenization" / "smoke"
  claims = {c["id"]: c for c in json.loads((run_dir / "results.json").read_text())["claims"]}
  assert len(claims) == len(results["claims"]) == 11
  for c in claims.values():
    assert set(c) == {"id", "paper", "statement", "paper_value", "ours", "criterion", "passed"}
  # The exact-math claims hold at smoke size too (seeded); learning claims are only reported.
  for cid in ("char-unigram-is-h-pi1", "block-unigram-is-L-r", "lzw-under-bound"):
    assert claims[cid]["passed"], claims[cid]
  assert (run_dir / "loss_vs_dictionary_size.png").stat().st_size > 0
  assert (run_dir / "char_vs_token_model.png").stat().st_size > 0
  summary = json.loads((run_dir / "summary.json").read_text())
  assert summary["learning"]["char_curve"] and summary["learning"]["token_curve"]
