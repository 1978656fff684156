"""Dispatcher choice and fallback, input validation and block-size rules of tree attention."""
import dataclasses
import os

import jax.numpy as jnp
import numpy as np
import pytest

import jaxtok_kernels
from jaxtok_kernels import dispatch, numerics, tiling
from jaxtok_kernels.tree_attention import GpuConfig, TpuConfig, gpu, ops, tpu
from jaxtok_kernels.tree_attention.reference import tree_attention_reference

SMALL = dict(b=2, t=3, h=4, k=2, s=11, dh=8)


def test_xla_and_default_on_cpu_are_the_reference(make_inputs):
  args = make_inputs(**SMALL, seed=0)
  ref = np.asarray(tree_attention_reference(*args))
  np.testing.assert_array_equal(np.asarray(jaxtok_kernels.tree_attention(*args)), ref)
  np.testing.assert_array_equal(
      np.asarray(jaxtok_kernels.tree_attention(*args, implementation="xla")), ref)


def test_pallas_on_cpu_runs_the_kernel_in_interpret_mode(make_inputs, monkeypatch):
  args = make_inputs(**SMALL, seed=1)
  calls = []
  pallas = ops.IMPLEMENTATIONS["pallas"]

  def spy(*a, **kw):
    calls.append(kw)
    return pallas.tpu(*a, **kw)

  monkeypatch.setitem(ops.IMPLEMENTATIONS, "pallas", dataclasses.replace(pallas, tpu=spy))
  out = jaxtok_kernels.tree_attention(*args, implementation="pallas",
                                      config=TpuConfig(block_s=8))
  assert calls and calls[0]["interpret"] is True
  np.testing.assert_allclose(np.asarray(out), np.asarray(tree_attention_reference(*args)),
                             atol=numerics.tolerance(jnp.float32, 14))


def test_explicit_pallas_on_an_unsupported_shape_raises_and_auto_falls_back(make_inputs):
  # The Triton kernel needs a power-of-two head dim >= 16; SMALL has Dh = 8. Traced for a GPU
  # (as an AOT compile would), "pallas" must say why instead of timing the reference.
  args = make_inputs(**SMALL, seed=2)
  with dispatch.compile_for("gpu"):
    with pytest.raises(NotImplementedError, match="head dim") as info:
      jaxtok_kernels.tree_attention(*args, implementation="pallas")
    out = jaxtok_kernels.tree_attention(*args)  # automatic: the reference
  # tokamax's form: an ExceptionGroup of every implementation's reason.
  assert isinstance(info.value, ExceptionGroup)
  assert info.group_contains(NotImplementedError, match="Dh=8")
  np.testing.assert_array_equal(np.asarray(out), np.asarray(tree_attention_reference(*args)))


def test_config_must_match_the_backend(make_inputs):
  args = make_inputs(**SMALL, seed=2)
  with pytest.raises(ValueError, match="TpuConfig"):
    jaxtok_kernels.tree_attention(*args, implementation="pallas", config=GpuConfig())
  with pytest.raises(ValueError, match="config must be"):
    jaxtok_kernels.tree_attention(*args, config={"block_s": 8})
  with pytest.raises(tiling.BlockSizeError, match="power of two"):
    GpuConfig(block_s=48)


def test_gpu_plan_tiles_any_group_and_rejects_other_head_dims():
  with pytest.raises(NotImplementedError, match="head dim"):
    gpu.plan(t=4, h=4, kv_heads=2, head_dim=96, config=GpuConfig())
  assert gpu.plan(t=5, h=8, kv_heads=2, head_dim=64, config=GpuConfig()) == (16, 64, 64)
  # G = 3 (SmolLM2: 9 query / 3 kv heads): 48 folded rows in blocks of 16.
  assert gpu.plan(t=1, h=9, kv_heads=3, head_dim=64, config=GpuConfig()) == (16, 16, 64)
  with pytest.raises(tiling.BlockSizeError, match="divide"):
    gpu.plan(t=1, h=9, kv_heads=3, head_dim=64, config=GpuConfig(block_r=32))


class _Kernel:
  """A toy op's kernels: a head dim above 4 is a shape they cannot tile."""

  def __init__(self):
    self.calls = []

  def __call__(self, x, *, config, interpret=None):
    self.calls.append((config, interpret))
    if x > 4:
      raise NotImplementedError(f"toy kernel: head dim {x} > 4")
    return "kernel"


def _toy_table():
  pallas = dispatch.Pallas(tpu=_Kernel(), gpu=_Kernel(), tpu_config=TpuConfig,
                           gpu_config=GpuConfig)
  return dispatch.implementations(xla=lambda x: "reference", pallas=pallas)


@pytest.mark.parametrize("platform,implementation,x,want", [
    ("cpu", None, 1, "reference"),       # no accelerator: the reference, never the kernel
    ("cpu", "pallas", 1, "kernel"),      # the TPU kernel, interpreted
    ("tpu", None, 1, "kernel"),
    ("gpu", None, 9, "reference"),       # the kernel cannot take it: automatic falls back
    ("gpu", "xla", 1, "reference"),
])
def test_dispatch_order(platform, implementation, x, want):
  table = _toy_table()
  with dispatch.compile_for(platform):
    assert dispatch.run("toy", table, implementation, x) == want
  tpu_calls, gpu_calls = table["pallas"].tpu.calls, table["pallas"].gpu.calls
  if platform == "cpu" and implementation == "pallas":
    assert tpu_calls == [(TpuConfig(), True)] and not gpu_calls
  if platform == "tpu":
    assert tpu_calls == [(TpuConfig(), False)]
  if (platform == "cpu" and implementation is None) or implementation == "xla":
    assert not tpu_calls and not gpu_calls


def test_explicit_pallas_never_falls_back():
  with dispatch.compile_for("gpu"), pytest.raises(dispatch.NoImplementation) as info:
    dispatch.run("toy", _toy_table(), "pallas", 9)
  assert isinstance(info.value, NotImplementedError)
  assert str(info.value).startswith("toy: no implementation could run (pallas: toy kernel: "
                                    "head dim 9 > 4)")
  assert [str(e) for e in info.value.exceptions] == ["toy kernel: head dim 9 > 4"]


def test_check_names_the_argument():
  table = _toy_table()
  dispatch.check(table, None, TpuConfig())
  with pytest.raises(ValueError, match=r"implementation must be 'pallas', 'xla' or None, got "
                                       r"'triton'"):
    dispatch.check(table, "triton", None)
  with pytest.raises(ValueError, match="config must be a TpuConfig or GpuConfig, got dict"):
    dispatch.check(table, "pallas", {"block_s": 8})


def test_unknown_implementation():
  with pytest.raises(ValueError, match="implementation"):
    jaxtok_kernels.tree_attention(*([jnp.zeros(1)] * 7), implementation="cuda")


@pytest.mark.parametrize("change,match", [
    (lambda a: a.__setitem__(slice(1, 3), [jnp.zeros((2, 3, 11, 8))] * 2),
     "H=4 must be a multiple of the kv heads K=3"),
    (lambda a: a.__setitem__(0, a[0][:, :, :3]), "multiple of the kv heads"),
    (lambda a: a.__setitem__(2, a[2][:, :, :5]), r"v_cache_BxKxSxDh must have the shape"),
    # The old [B, S, K, Dh] layout is rejected with the expected kv-head-major shape.
    (lambda a: a.__setitem__(1, jnp.zeros((2, 11, 2, 4))),
     r"k_cache_BxKxSxDh must have shape \[B=2, K, S, Dh=8\]"),
    (lambda a: a.__setitem__(4, a[4][:, :2]), r"k_new_BxTxKxDh must have shape \[B, T, K, Dh\]"),
    (lambda a: a.__setitem__(6, a[6][:, :2]), r"block_mask_BxTxT must have shape \[B, T, T\]"),
    (lambda a: a.__setitem__(3, jnp.array([[1, 12], [0, 0]], jnp.int32)),
     r"cache_len_BxK must lie in \[0, S=11\]"),
    (lambda a: a.__setitem__(3, jnp.array([[-1, 0], [0, 0]], jnp.int32)), "cache_len_BxK"),
    (lambda a: a.__setitem__(3, jnp.array([1, 2], jnp.int32)),
     r"cache_len_BxK must have shape \[B, K\]"),
])
def test_bad_input_names_the_argument(make_inputs, change, match):
  args = list(make_inputs(**SMALL, seed=3))
  change(args)
  with pytest.raises(ValueError, match=match):
    jaxtok_kernels.tree_attention(*args, implementation="pallas")


def test_mask_broadcasts_from_TxT(make_inputs):
  q, kc, vc, lens, kn, vn, mask = make_inputs(**SMALL, seed=4)
  causal = jnp.tril(jnp.ones((3, 3), bool))
  np.testing.assert_array_equal(
      np.asarray(jaxtok_kernels.tree_attention(q, kc, vc, lens, kn, vn, causal)),
      np.asarray(tree_attention_reference(q, kc, vc, lens, kn, vn,
                                          jnp.broadcast_to(causal, (2, 3, 3)))))


def test_tpu_block_size_validation():
  tiling.validate_tpu_block("ok", (16, 128), (40, 256))
  tiling.validate_tpu_block("full dims", (40, 96), (40, 96))
  with pytest.raises(tiling.BlockSizeError, match="multiple of 8"):
    tiling.validate_tpu_block("rows", (12, 128), (40, 256))
  with pytest.raises(tiling.BlockSizeError, match="multiple of 128"):
    tiling.validate_tpu_block("lanes", (16, 64), (40, 256))
  with pytest.raises(tiling.BlockSizeError, match=r"must be in \[1, 40\]"):
    tiling.validate_tpu_block("too big", (48, 128), (40, 128))
  with pytest.raises(tiling.BlockSizeError, match="block_s"):
    tpu.plan(t=3, s=40, kv_heads=2, head_dim=64, config=TpuConfig(block_s=12))
  # Dh = 64 with K = 2: two kv heads per program make the 128-lane block legal.
  assert tpu.plan(t=3, s=40, kv_heads=2, head_dim=64, config=TpuConfig(block_s=16)) == (8, 2, 16, 3)
  assert tpu.plan(t=9, s=4096, kv_heads=8, head_dim=128, config=TpuConfig()) == (16, 1, 512, 8)


def test_triton_block_size_validation():
  with pytest.raises(tiling.BlockSizeError, match="power of two"):
    tiling.validate_pow2("block_s", 48, 16)
  with pytest.raises(tiling.BlockSizeError, match=">= 16"):
    GpuConfig(block_s=8)


def test_tolerance_scales_with_reduction():
  assert numerics.tolerance(jnp.float32) == 1e-5
  assert numerics.tolerance(jnp.bfloat16, 128) == 2e-2
  assert numerics.tolerance(jnp.float32, 512) == pytest.approx(2e-5)


def test_padding_helpers():
  x = jnp.ones((2, 3))
  assert tiling.pad_axis(x, 1, 8).shape == (2, 8)
  assert float(tiling.pad_axis(x, 1, 8)[0, 5]) == 0.0
  assert (tiling.cdiv(17, 8), tiling.round_up(17, 8), tiling.next_pow2(17)) == (3, 24, 32)


def test_compile_gate_when_side_folders_exist():
  side = os.environ.get("JAXTOK_COMPILE_SIDE")
  if not side or not os.path.isdir(os.path.join(side, "tpu")):
    pytest.skip("set JAXTOK_COMPILE_SIDE to a folder with tpu/ and cuda/ side installs "
                "(.ci/compile_kernels.sh creates it) to run the TPU/H100 compile gate")
  from jaxtok_kernels import check
  assert check.main(["--targets", "tpu-v5e,h100", "--side", side]) == 0


def _has_pallas_call(closed_jaxpr) -> bool:
  for eqn in closed_jaxpr.jaxpr.eqns:
    if eqn.primitive.name == "pallas_call":
      return True
    inner = eqn.params.get("jaxpr")
    if inner is not None and _has_pallas_call(inner):
      return True
  return False


def test_compile_for_makes_the_dispatcher_trace_the_target_kernel(make_inputs):
  # On this CPU the default dispatch is the reference; an ahead-of-time compile for a TPU or
  # GPU (jaxtok aot --decode) must trace that target's Pallas kernel instead.
  import jax

  args = make_inputs(**SMALL, seed=5)

  def traced():
    return jax.make_jaxpr(lambda *a: jaxtok_kernels.tree_attention(*a))(*args)
  assert not _has_pallas_call(traced())
  with dispatch.compile_for("tpu"):
    assert dispatch.backend() == "tpu" and _has_pallas_call(traced())
  with dispatch.compile_for("gpu"):
    assert dispatch.backend() == "gpu"
  assert dispatch.backend() == "cpu"
  with pytest.raises(ValueError, match="platform"), dispatch.compile_for("cuda"):
    pass
