import pytest

from raydino.config import ConfigError, load_config, load_yaml, save_config


def test_presets_load_and_round_trip(tmp_path):
    for name in ("demo", "faces64", "ffhq256"):
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
                                          "train.stages.0.images=64", "pyramids.sizes=[28,56]",
                                          "loss.level_weights=[1.0,2.5]"])
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


def test_moved_keys_still_load_into_their_new_sections(tmp_path):
    """A run folder or best.yaml written before the keys moved keeps loading, and old overrides keep working."""
    old = tmp_path / "old.yaml"
    old.write_text("preset: demo\nsample:\n  fd_encoder: /m/fd\ndata:\n  clip_fit_steps: 7\n")
    cfg = load_config(config_file=str(old))
    assert (cfg.eval.fd_encoder, cfg.tiny.clip_fit_steps) == ("/m/fd", 7)
    assert load_config("demo", overrides=["sample.attribute_classifier=/m/attr"]).eval.attribute_classifier == "/m/attr"


def test_tiny_models_are_an_explicit_setting(tmp_path):
    """Only a config that says so builds the offline models: a --config file without `preset:` does not."""
    from raydino.pipeline import plan

    plain = tmp_path / "plain.yaml"
    plain.write_text(f"out: {tmp_path / 'out'}\npyramids:\n  dino: facebook/dinov2-small\n")
    steps = {cfg_name: [s.name for s in plan(cfg)] for cfg_name, cfg in
             (("demo", load_config("demo")), ("plain", load_config(config_file=str(plain))))}
    assert "tiny models" in steps["demo"] and "tiny models" not in steps["plain"]


def test_lookup_and_override_by_key_path():
    from raydino.config import lookup, override

    cfg = load_config("demo")
    assert lookup(cfg, "loss.level_weights.1") == cfg.loss.level_weights[1]
    with pytest.raises(ConfigError, match="loss.level_weights.9"):
        lookup(cfg, "loss.level_weights.9")
    changed = override(cfg, ["train.num_workers=1"], {"loss.level_weights.0": 3.0})
    assert (changed.train.num_workers, changed.loss.level_weights[0]) == (1, 3.0)
    with pytest.raises(ConfigError, match="train.num_workers"):
        override(cfg, values={"train.num_workers": "two"})
