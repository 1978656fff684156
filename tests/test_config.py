import dataclasses

import pytest

from jaxtok.config import ConfigError, apply_overrides, diff, from_dict, to_dict
from jaxtok.nn.config import ModelConfig
from jaxtok_experiments import lm


def test_override_parses_typed_values():
  cfg = apply_overrides(lm.smoke(), ["train.steps=7", "train.lr=0.5", "model.tie_embeddings=false",
                                     "model.extra_heads=3,4", "mesh.data=1"])
  assert cfg.train.steps == 7 and cfg.train.lr == 0.5
  assert cfg.model.tie_embeddings is False and cfg.model.extra_heads == (3, 4)


def test_overrides_validate_together():
  # warmup 50 > steps 30 only if steps is applied alone; both at once is valid.
  cfg = apply_overrides(lm.cpu(), ["train.steps=30", "train.warmup_steps=5"])
  assert (cfg.train.steps, cfg.train.warmup_steps) == (30, 5)


@pytest.mark.parametrize("assignment, field", [
    ("train.steps=-1", "train.steps"),
    ("model.nope=3", "model.nope"),
    ("model.n_heads=3", "model.n_heads"),
    ("model.n_kv_heads=3", "model.n_kv_heads"),
    ("model.positions=alibi", "model.positions"),
    ("train.lr=fast", "train.lr"),
    ("train=3", "train"),
])
def test_bad_overrides_name_the_field(assignment, field):
  with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
    apply_overrides(lm.smoke(), [assignment])


def test_heads_must_divide_width():
  with pytest.raises(ConfigError, match="n_heads"):
    ModelConfig(d_model=100, n_heads=3)


def test_round_trip_and_diff():
  cfg = lm.smoke()
  assert from_dict(type(cfg), to_dict(cfg)) == cfg
  other = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, lr=1.0))
  assert diff(cfg, other) == [f"train.lr: {cfg.train.lr} != 1.0"]
