import pytest

from monolith_ray.config import ConfigError, ModelConfig, load_config
from monolith_ray.config.model import BUILTIN_KINDS
from monolith_ray.model import build, dcn_v2, deepfm, examples
from monolith_ray.model.registry import BUILTINS

SLOTS = "slots:\n  - {name: user, slot_id: 1, dim: 4}\n"


def test_builtins_by_name_and_the_config_knows_them_all():
    assert tuple(BUILTINS) == BUILTIN_KINDS
    assert build(ModelConfig()) is deepfm
    assert build(ModelConfig(kind="dcn_v2")) is dcn_v2
    cfg = load_config(SLOTS + "model: {kind: dcn_v2, hidden: [8], cross_layers: 2}\n")
    assert cfg.model == ModelConfig(kind="dcn_v2", hidden=(8,), cross_layers=2)


def test_a_model_of_your_own_by_import_path():
    """A factory, a module with init/apply, an object with them: each is a model."""
    made = build(load_config(SLOTS + "model: {kind: 'monolith_ray.model.examples:make'}\n").model)
    assert isinstance(made, examples.PlainMLP)
    assert build(ModelConfig(kind="monolith_ray.model.deepfm")) is deepfm
    assert build(ModelConfig(kind="monolith_ray.model:dcn_v2")) is dcn_v2


@pytest.mark.parametrize("kind, reason", [
    ("depfm", "not a built-in model .*No module named 'depfm'"),
    ("monolith_ray.model.examples:nothing", "cannot be imported.*nothing"),
    ("monolith_ray.model.pooling", "has no callable init and apply"),
    ("monolith_ray.model.examples:PlainMLP.init", "failed to make a model"),
    ("builtins:repr", "returned str, which has no callable init and apply"),
])
def test_a_bad_kind_fails_at_load_naming_the_key(kind, reason):
    with pytest.raises(ConfigError, match=rf"^model\.kind: .*{reason}"):
        load_config(SLOTS + f"model: {{kind: '{kind}'}}\n")


def test_cross_layers_at_least_one():
    with pytest.raises(ConfigError, match=r"^model\.cross_layers: must be >= 1"):
        load_config(SLOTS + "model: {cross_layers: 0}\n")
