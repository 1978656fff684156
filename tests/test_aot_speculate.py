"""``jaxtok aot --decode MODEL --target T --speculate tr``: the ahead-of-time compile of the Token
Recycling loop (arXiv 2408.08696) and its gate (kernel called per verify step, no per-step copy
of a layer's KV cache), shared with plain ``aot --decode``.

The TPU / H100 compiles need the side folders and run in CI (.ci/run); here: the command line's
bad inputs, the gate on hand-written HLO, and the whole loop lowered for this CPU on a tiny model.
"""
import pytest

from jaxtok import hlo
from jaxtok.cli import aot
from jaxtok.nn import ModelConfig
from jaxtok.speculative.recycling import TokenRecycling


@pytest.mark.parametrize("argv,needle", [
    (["--speculate", "medusa"], "--speculate"),  # unknown drafter
    (["--speculate", "suffix"], "--speculate"),  # a host drafter: no on-device loop
    (["--speculate", "tr", "--tree-nodes", "1"], "--tree-nodes"),
    (["--tree-nodes", "16"], "--tree-nodes"),  # without --speculate
])
def test_bad_speculate_arguments_name_the_argument(capsys, argv, needle):
  # The checks run before the model is resolved: no download, no compile.
  assert aot.main(["--decode", "smollm2-135m", "--target", "h100", *argv]) == 2
  err = capsys.readouterr().err
  assert "error" in err and needle in err, err


def test_parser_defaults_to_plain_decoding():
  args = aot.parser().parse_args(["--decode", "smollm2-135m", "--speculate", "tr"])
  assert args.speculate == "tr" and args.tree_nodes is None
  assert aot.device_drafter("tr").n_nodes == aot.PAPER_TREE_NODES["tr"] == 80
  assert aot.device_drafter("tr", 16).n_nodes == 16


_HLO = """\
%body.1 (p: (s32[], bf16[2,3,40,64])) -> (s32[], bf16[2,3,40,64]) {
  %c = bf16[2,3,40,64]{3,2,1,0} copy(%x)
  %tree_attention_tpu.3 = bf16[2,3,48,64]{3,2,1,0} custom-call(%a, %b), custom_call_target="tpu_custom_call"
}

ENTRY %main.2 () -> s32[] {
  %w = (s32[], bf16[2,3,40,64]) while(%t), condition=%cond.1, body=%body.1
  %tree_attention_tpu.9 = bf16[2,3,48,64]{3,2,1,0} custom-call(%a, %b), custom_call_target="tpu_custom_call"
}
"""


def test_gate_reads_kernel_calls_and_cache_copies_per_loop_step():
  body = hlo.while_body_lines(_HLO)
  assert len(hlo.custom_calls_named(body, aot._KERNEL)) == 1
  assert len(hlo.custom_calls_named(_HLO.splitlines(), aot._KERNEL)) == 2
  assert len(hlo.copies_of(body, "bf16", (2, 3, 40, 64))) == 1
  ok = dict(kernel_calls=2, loop_kernel_calls=1, loop_cache_copies=0)
  assert aot.passes(ok)
  assert not aot.passes({**ok, "loop_cache_copies": 1})
  assert not aot.passes({**ok, "loop_kernel_calls": 0})  # kernel only outside the loop


def test_tr_loop_lowers_on_cpu_without_cache_copies():
  """The whole TR generation loop compiled for this CPU (abstract weights): no step copies a
  layer's cache; the CPU program runs the reference attention, so the gate itself says no."""
  cfg = ModelConfig(vocab_size=41, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, d_ff=48,
                    max_len=64)
  r = aot.compile_generation(cfg, "cpu", batch=2, prompt_len=6, new_tokens=5,
                             drafter=TokenRecycling(n_nodes=8, k=4, prompt_logits=4))
  assert r["cache_shape"] == (2, 2, 6 + 5 + 8 - 2, 8)
  assert r["loop_cache_copies"] == 0
  assert r["loop_kernel_calls"] == 0 and not aot.passes(r)
  text = aot.decode_report(r)
  assert "8-node tree" in text and "copies per verify step: 0" in text
