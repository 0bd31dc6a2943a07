"""What the figures are computed on: the held-out split, the encoders a pyramid binds, FD's floor, the sweep's keys."""

from __future__ import annotations

import numpy as np
import pytest

from raydino.cli import main
from raydino.config import ConfigError, load_config
from raydino.data.sources import Split, list_images
from raydino.evaluation.metrics import fd_with_floor
from raydino.models.loading import EncoderMismatch
from raydino.pyramids import schema
from raydino.sweep.tune import search_space
from raydino.train.preflight import bind_pyramid


def test_split_is_deterministic_disjoint_and_sized(faces_dir):
    sides = {}
    for part in ("train", "holdout"):
        listing = list_images(str(faces_dir))
        info = Split(part, 0.02, 8).apply(listing)
        sides[part] = listing.images
        assert info["files_total"] == 48 and info["files_held_out"] == 8  # 2% of 48 rounds up to 1: raised to 8
    assert len(sides["holdout"]) == 8 and len(sides["train"]) == 40
    assert set(sides["holdout"]).isdisjoint(sides["train"])
    again = list_images(str(faces_dir))
    Split("holdout", 0.02, 8).apply(again)
    assert again.images == sides["holdout"]
    assert Split("holdout", 0.5, 1).held_out_count(48) == 16  # never more than a third: training keeps a majority
    with pytest.raises(ValueError, match="holdout_fraction"):
        Split("holdout", 1.5, 1)


def test_a_file_keeps_its_side_when_the_folder_moves(faces_dir, tmp_path):
    import shutil

    moved = shutil.copytree(faces_dir, tmp_path / "elsewhere" / "faces")
    names = []
    for folder in (faces_dir, moved):
        listing = list_images(str(folder))
        Split("holdout", 0.02, 8).apply(listing)
        names.append([p.rsplit("/", 1)[1] for p in listing.images])
    assert names[0] == names[1]  # the hash is of the path below the folder, not of the absolute path


def test_encoders_come_from_the_pyramid_unless_the_config_names_others(train_pyramids, tiny_models):
    manifest = schema.read_manifest(train_pyramids)
    cfg = load_config("demo", overrides=["pyramids.dino=/nowhere/dinov2-tiny", "pyramids.clip=/nowhere/clip-tiny"])
    bound, _ = bind_pyramid(cfg, train_pyramids)
    assert bound.pyramids.dino == manifest["dino"]["source"]
    assert bound.pyramids.clip == ""  # the pyramid has no CLIP column: no text conditioning
    assert cfg.pyramids.dino == "/nowhere/dinov2-tiny"  # the config given is not changed

    same = load_config("demo", overrides=[f"pyramids.dino={tiny_models['dino']}"])
    assert bind_pyramid(same, train_pyramids)[0].pyramids.dino == str(tiny_models["dino"])

    other = load_config("demo", overrides=[f"pyramids.dino={tiny_models['fd']}"])  # same shape, other weights
    with pytest.raises(EncoderMismatch) as info:
        bind_pyramid(other, train_pyramids)
    assert str(tiny_models["fd"]) in str(info.value) and manifest["dino"]["hash"] in str(info.value)


def test_pyramids_with_dino_and_no_clip_skips_a_missing_preset_clip(tiny_models, faces_dir, tmp_path, monkeypatch,
                                                                    ray_local):
    import raydino.pyramids.extract as extract

    seen = {}
    monkeypatch.setattr(extract, "build_pyramids", lambda cfg, images, out, **kw: seen.update(cfg=cfg, **kw))
    args = ["pyramids", "--images", str(faces_dir), "--out", str(tmp_path / "p"), "--dino", str(tiny_models["dino"])]
    assert main([*args, f"out={tmp_path}"]) == 0  # the demo preset's CLIP, {out}/models/clip-tiny, is not there
    assert seen["cfg"].clip == "" and seen["split"] is None
    assert main([*args, f"pyramids.clip={tiny_models['clip']}", "--split", "holdout"]) == 0  # this one is
    assert seen["cfg"].clip == str(tiny_models["clip"]) and seen["split"].part == "holdout"


def test_fd_is_reported_with_its_floor_at_the_same_n():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(200, 8))
    same = fd_with_floor(rng.normal(size=(100, 8)), real)
    shifted = fd_with_floor(rng.normal(loc=1.0, size=(100, 8)), real)
    assert same["n"] == shifted["n"] == 100 and same["floor"] == shifted["floor"] > 0
    assert same["value"] < 2 * same["floor"]  # indistinguishable from real at this n
    assert shifted["value"] > 0.8 * 8 > 5 * shifted["floor"]  # the mean shift (squared norm 8) stands out
    with pytest.raises(ValueError, match="at least 4"):
        fd_with_floor(real[:3], real[:3])


def test_sweep_refuses_a_swept_key_a_stage_ignores(tiny_models):
    cfg = load_config("demo", overrides=["loss.stage_level_weights={'16': [1.0, 0.5, 0.1]}"])
    with pytest.raises(ConfigError, match=r"'loss.level_weights.0' is ignored at stages \[16\] px"):
        search_space(cfg)
    cfg.tune.overrides.append("loss.stage_level_weights={}")  # the way out the error names
    assert set(search_space(cfg)) == set(cfg.tune.search)
    assert set(search_space(load_config("ffhq256"))) == set(load_config("ffhq256").tune.search)


def test_a_symlink_back_up_the_tree_is_walked_once(faces_dir, tmp_path):
    import shutil

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(next(faces_dir.glob("*.png")), folder / "sub" / "a.png")
    (folder / "sub" / "up").symlink_to(folder)  # a loop: photos/sub/up/sub/up/...
    listing = list_images(str(folder))
    assert listing.images == [str(folder / "sub" / "a.png")] and not listing.failures
    assert listing.ignored["(folder seen before, through a symlink)"] == 1
