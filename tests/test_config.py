"""TrainConfig validation and persistence."""

import pytest

from breakhis_core.config import TrainConfig
from breakhis_core.errors import ConfigError


def test_defaults_follow_the_paper():
    config = TrainConfig().validate()
    assert (config.input_size, config.lr_frozen, config.lr_finetune, config.unfreeze, config.dropout) == (224, 1e-3, 1e-4, 1, 0.5)
    assert config.weights == "imagenet" and config.split == "patient" and config.backbone == "vgg16"


@pytest.mark.parametrize(
    "field, value",
    [("magnification", "50"), ("split", "random"), ("input_size", 16), ("lr_frozen", 0), ("device", "tpu"),
     ("train_fraction", 0.9), ("stain_norm", "vahadane"), ("unfreeze", 6), ("keep_epoch", "best_val_auc"),
     ("recipe", "imagenet"), ("backbone", "resnet18")],
)
def test_invalid_values_are_named(field, value):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**{field: value}).validate()


def test_roundtrip_and_unknown_keys(tmp_path):
    config = TrainConfig(data="/x", magnification="200", seed=4)
    config.save(tmp_path / "config.json")
    assert TrainConfig.load(tmp_path / "config.json") == config
    with pytest.raises(ConfigError, match="epochs"):
        TrainConfig.from_dict({"epochs": 3})


def test_recipe_follows_the_weights():
    assert TrainConfig().keep_epoch == "best_val_loss" and TrainConfig().recipe == "auto"
    assert (TrainConfig().resolved_recipe, TrainConfig().stage2_unfreeze) == ("paper", 1)
    assert (TrainConfig(weights="none").resolved_recipe, TrainConfig(weights="none").stage2_unfreeze) == ("scratch", 5)
    assert TrainConfig(weights="none", recipe="paper", unfreeze=3).stage2_unfreeze == 3
    assert TrainConfig(weights="/w.h5", recipe="scratch").stage2_unfreeze == 5
    assert TrainConfig(weights="none", backbone="efficientnetv2b0").stage2_unfreeze == 8  # stem, block1-6, top
    with pytest.raises(ConfigError, match="cache=on needs a frozen part"):
        TrainConfig(weights="none", cache="on").validate()
    TrainConfig(weights="none", recipe="paper", cache="on").validate()


@pytest.mark.parametrize("field, value, message", [
    ("dropout", 1.0, r"dropout must be in \[0, 1\)"),
    ("lr_finetune", 0.0, "lr_finetune must be > 0"),
    ("unfreeze", -1, "unfreeze must be >= 0"),
    ("mpp", 200.0, r"mpp must be between 0.01 and 100 \(µm per pixel\)"),
    ("batch_size", 0, "batch_size must be >= 1"),
])
def test_numeric_fields_are_checked_against_their_declared_bounds(field, value, message):
    from breakhis_core.config import config_field

    assert config_field(field).metadata["bounds"] is not None
    with pytest.raises(ConfigError, match=f"{message}. Received: {field}={value}"):
        TrainConfig(**{field: value}).validate()


def test_a_changed_bound_is_what_validate_checks(monkeypatch):
    from breakhis_core.config import Bounds, config_field

    field = config_field("head_units")
    TrainConfig(head_units=2048).validate()
    monkeypatch.setattr(field, "metadata", {**field.metadata, "bounds": Bounds(1, 1024)})
    with pytest.raises(ConfigError, match="head_units must be between 1 and 1024"):
        TrainConfig(head_units=2048).validate()


def test_unfreeze_is_bounded_by_the_backbones_blocks():
    TrainConfig(backbone="efficientnetv2b0", unfreeze=8).validate()
    with pytest.raises(ConfigError, match=r"unfreeze must be 0..5 \(VGG16 has 5 blocks: block1, .*block5\)"):
        TrainConfig(unfreeze=8).validate()


@pytest.mark.parametrize("layers, blocks", [(0, 0), (1, 0), (5, 1), (6, 2), (9, 2), (10, 3), (13, 3), (14, 4),
                                            (16, 4), (17, 5), (18, 5)])
def test_an_old_config_counts_vgg16_layers_and_reads_as_blocks(tmp_path, layers, blocks):
    """config.json files from before backbones have no "backbone" and count the last VGG16 base layers of stage 2:
    read as VGG16 with the blocks holding a convolution among those layers (5 layers = block4_pool + block5 → 1)."""
    import json

    values = TrainConfig().to_dict()
    del values["backbone"]
    values["unfreeze"] = layers
    (tmp_path / "config.json").write_text(json.dumps(values))
    old = TrainConfig.load(tmp_path / "config.json").validate()
    assert (old.backbone, old.unfreeze) == ("vgg16", blocks)
    new = TrainConfig(unfreeze=blocks)
    new.save(tmp_path / "new.json")
    assert TrainConfig.load(tmp_path / "new.json").unfreeze == blocks  # a config with its backbone is read as written
