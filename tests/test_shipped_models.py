"""The package's prebuilt tiny models: a run copies them only for their own recipe, and they rebuild bit for bit."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from raydino.config import TinyModelsConfig, load_config, lookup
from raydino.layout import Output
from raydino.models.loading import load_clip, load_dino
from raydino.models.shipping import CLIP_ROWS, CLIP_WEIGHTS, TRAINING_CODE, recipe, shipped_build
from raydino.models.tiny import MODEL_KEYS, SUMMARY, folders, write_tiny_models
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
    assert shipped is not None and shipped.name == "demo", (
        "no shipped build of the demo's recipe: the code that trains the tiny models changed since it was shipped; "
        "run `raydino tiny-models --preset demo --ship` and commit raydino/models/shipped/demo")
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


def test_a_tiny_build_is_the_same_whatever_the_threads_and_processes(tmp_path, monkeypatch, faces_dir):
    """Every tensor and probe figure of two small builds: 3 threads (OMP_NUM_THREADS) and 2 processes, then 1 and 1.

    OMP_NUM_THREADS once changed the tiny CLIP fit's weights: the jobs fix their own thread count.
    """
    budget = dict(encoder_steps=20, fd_encoder_steps=20, classifier_steps=20, segmenter_steps=20, probe_faces=32,
                  clip_fit_steps=20)
    for threads, processes in (("3", 2), ("1", 1)):
        monkeypatch.setenv("OMP_NUM_THREADS", threads)
        write_tiny_models(tmp_path / threads, faces_dir, seed=3, budget=TinyModelsConfig(**budget, processes=processes))
    first, second = tensors(tmp_path / "3", skip=None), tensors(tmp_path / "1", skip=None)
    assert first.keys() == second.keys() and len(first) == 5
    for name, weights in first.items():
        different = [k for k in weights if not torch.equal(weights[k], second[name][k])]
        assert not different, f"{name}: {len(different)} tensors differ between the builds, e.g. {different[:3]}"
    for probes in sorted((tmp_path / "3").glob("*/probes.json")):
        theirs = json.loads((tmp_path / "1" / probes.relative_to(tmp_path / "3")).read_text())
        assert json.loads(probes.read_text())["trained"] == theirs["trained"]


def test_the_shipped_build_lists_every_module_that_trains_it():
    """TRAINING_CODE, whose hash is in the recipe, is models/tiny.py and every raydino module it imports but config/."""
    from test_architecture import PACKAGE, imported

    closure, todo = set(), ["models/tiny.py"]
    while todo:
        if (module := todo.pop()) not in closure:
            closure.add(module)
            todo += sorted(imported(PACKAGE / module))
    packages = {m.rsplit("/", 1)[0] + "/__init__.py" for m in closure}  # run by importing any of their modules
    closure |= {p for p in packages if (PACKAGE / p).is_file() and (PACKAGE / p).stat().st_size > 0}
    assert {m for m in closure if not m.startswith("config/")} == set(TRAINING_CODE)


def test_the_tiny_models_go_where_the_preset_loads_them_from():
    """The preset's model paths name the folders: `raydino run` writes each model into OUT/models/<that name>."""
    for preset in ("demo", "faces64"):
        cfg = load_config(preset)
        names = folders(cfg)
        assert {lookup(cfg, key) for key in MODEL_KEYS.values()} == {str(Output(cfg.out).models / names[k]) for k in MODEL_KEYS}
    renamed = load_config("demo", overrides=["pyramids.dino='{out}/models/my-dino'"])
    assert folders(renamed)["dino"] == "my-dino"
