import pytest

from raydino.config import ConfigError, load_config, load_yaml, save_config


def test_presets_load_and_round_trip(tmp_path):
    for name in ("demo", "ffhq256"):
        cfg = load_config(name)
        assert cfg.preset == name
        path = save_config(cfg, tmp_path / f"{name}.yaml")
        again = load_config(config_file=str(path))
        assert again == cfg


def test_real_preset_names_real_models():
    cfg = load_config("ffhq256")
    assert cfg.pyramids.dino == "facebook/dinov2-base"
    assert ":" in cfg.pyramids.clip
    assert cfg.train.stages[-1].resolution == 256


def test_overrides_nested_lists_and_types():
    cfg = load_config("demo", overrides=["train.num_workers=1", "loss.level_weights.1=2.5",
                                          "train.stages.0.images=64", "pyramids.sizes=[28,56]"])
    assert cfg.train.num_workers == 1
    assert cfg.loss.level_weights[1] == 2.5
    assert cfg.train.stages[0].images == 64
    assert cfg.pyramids.sizes == [28, 56]
    # an int where a float is expected is fine; the value is converted
    assert load_config("demo", overrides=["loss.color_weight=2"]).loss.color_weight == 2.0


@pytest.mark.parametrize(
    "override, key",
    [
        ("train.nme=3", "train.nme"),
        ("nope.x=1", "nope"),
        ("train.num_workers=two", "train.num_workers"),
        ("train.use_gpu=3", "train.use_gpu"),
        ("pyramids.sizes=[a,b]", "pyramids.sizes.0"),
        ("train.stages.9.images=1", "train.stages.9.images"),
    ],
)
def test_bad_override_names_the_key(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config("demo", overrides=[override])


def test_bad_file_and_preset(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  chanels: [1]\n")
    with pytest.raises(ConfigError, match="model.chanels"):
        load_config(config_file=str(bad))
    with pytest.raises(ConfigError, match="unknown preset 'nosuch'"):
        load_config("nosuch")
    with pytest.raises(ConfigError, match="not of the form"):
        load_config("demo", overrides=["train.num_workers"])
    assert load_yaml(tmp_path / "bad.yaml")["model"] == {"chanels": [1]}
