"""The package's prebuilt tiny models: a run copies them only for their own recipe, and they rebuild bit for bit."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from raydino.config import load_config, lookup
from raydino.layout import Output
from raydino.models.loading import load_clip, load_dino
from raydino.models.shipping import CLIP_ROWS, CLIP_WEIGHTS, build_recipe, recipe, shipped_build
from raydino.models.tiny import MODEL_KEYS, SUMMARY, folders
from raydino.pipeline import _models


def tensors(folder, skip="clip-tiny"):
    """Every safetensors file under ``folder`` but the tiny CLIP's (shipped compact, checked by its hash)."""
    return {str(f.relative_to(folder)): load_file(f) for f in sorted(folder.rglob("*.safetensors"))
            if f.parent.name != skip}


def recorded_clip_hash(shipped):
    return json.loads((shipped / SUMMARY).read_text())["hashes"]["clip"]


def test_a_run_copies_the_shipped_build_of_its_own_recipe_only(tmp_path):
    demo = load_config("demo")
    shipped = shipped_build(recipe(demo))
    assert shipped is not None and shipped.name == "demo"
    for change in ("data.synth_count=48", "data.seed=1", "tiny.encoder_steps=10", "pyramids.sizes=[56,84,112]"):
        assert shipped_build(recipe(load_config("demo", overrides=[change]))) is None, change
    # how many processes train them changes nothing in the weights, so it is not part of the recipe
    assert shipped_build(recipe(load_config("demo", overrides=["tiny.processes=1"]))) == shipped

    # the whole CLIP is 13.5 MB: only the token-embedding rows its fit moved are tracked
    assert not (shipped / "clip-tiny" / CLIP_WEIGHTS).exists()
    assert (shipped / "clip-tiny" / CLIP_ROWS).stat().st_size < 1 << 20


def test_the_copy_rebuilds_the_whole_tiny_clip_and_writes_its_summary_last(tmp_path, faces_dir):
    """Into the folders the config loads the models from, renamed ones too."""
    demo = load_config("demo", overrides=[f"out={tmp_path}", "pyramids.dino='{out}/models/my-dino'",
                                          "pyramids.clip='{out}/models/my-clip'"])
    shipped = shipped_build(recipe(demo))
    _models(demo, faces_dir, Output(demo.out).models)
    assert (tmp_path / "models" / SUMMARY).is_file()
    assert json.loads((tmp_path / "models" / SUMMARY).read_text())["folders"] == folders(demo)
    assert load_dino(demo.pyramids.dino).hash == load_dino(str(shipped / "dinov2-tiny")).hash
    copied = tensors(tmp_path / "models", skip="my-clip")
    original = {k.replace("dinov2-tiny/", "my-dino/"): v for k, v in tensors(shipped).items()}
    assert original.keys() == copied.keys() and len(copied) == 4
    assert all(torch.equal(original[n][k], copied[n][k]) for n in original for k in original[n])
    clip = tmp_path / "models" / "my-clip"
    assert not (clip / CLIP_ROWS).exists()
    assert load_clip(str(clip)).hash == recorded_clip_hash(shipped)  # the fitted weights, every one of 3.4 M


def test_the_shipped_tiny_models_rebuild_bit_for_bit_whatever_the_thread_count(tmp_path, monkeypatch):
    """`raydino tiny-models --preset demo --ship` into a temporary folder: every tensor and every probe figure equal.

    OMP_NUM_THREADS once changed the tiny CLIP fit's weights: the jobs fix their own thread count.
    """
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    cfg = load_config("demo")
    shipped = shipped_build(recipe(cfg))
    build_recipe(cfg, tmp_path / "rebuilt")
    rebuilt, original = tensors(tmp_path / "rebuilt"), tensors(shipped)
    assert original.keys() == rebuilt.keys() and len(rebuilt) == 4
    assert load_clip(str(tmp_path / "rebuilt" / "clip-tiny")).hash == recorded_clip_hash(shipped)
    for name, weights in original.items():
        assert weights.keys() == rebuilt[name].keys(), name
        different = [k for k in weights if not torch.equal(weights[k], rebuilt[name][k])]
        assert not different, f"{name}: {len(different)} tensors differ from the shipped build, e.g. {different[:3]}"
    for probes in sorted(shipped.glob("*/probes.json")):
        theirs = json.loads((tmp_path / "rebuilt" / probes.relative_to(shipped)).read_text())
        assert json.loads(probes.read_text())["trained"] == theirs["trained"]
    assert json.loads((tmp_path / "rebuilt" / SUMMARY).read_text())["recipe"] == recipe(cfg)


def test_the_tiny_models_go_where_the_preset_loads_them_from():
    """The preset's model paths name the folders: `raydino run` writes each model into OUT/models/<that name>."""
    for preset in ("demo", "faces64"):
        cfg = load_config(preset)
        names = folders(cfg)
        assert {lookup(cfg, key) for key in MODEL_KEYS.values()} == {str(Output(cfg.out).models / names[k]) for k in MODEL_KEYS}
    renamed = load_config("demo", overrides=["pyramids.dino='{out}/models/my-dino'"])
    assert folders(renamed)["dino"] == "my-dino"
