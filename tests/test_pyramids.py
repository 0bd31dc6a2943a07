"""Milestone 1 end to end: the Ray Data pyramid pipeline on a messy folder, with tiny models.

Every Ray Data run starts an encoder actor (seconds), so the module builds one
pyramid through the CLI and most tests read it; only overwrite and the
failure threshold run the pipeline again.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
import torch.nn.functional as F

from raydino.cli import main
from raydino.config import PyramidConfig, load_config
from raydino.data.images import decode_image
from raydino.pipeline import plan
from raydino.pyramids import schema
from raydino.pyramids.extract import build_pyramids

SIZES = [56, 112]
ARGS = ["--sizes", "56,112", "--batch-size", "8", "pyramids.clip=", "pyramids.min_side=32", "pyramids.max_pixels=4000000"]


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


def read_pyarrow(folder: Path) -> dict[str, np.ndarray]:
    """The pyramid through pyarrow alone, rows in id order."""
    table = pq.read_table(sorted(str(p) for p in folder.glob("*.parquet"))).sort_by("id")
    return {name: (col.combine_chunks().to_numpy_ndarray() if hasattr(col.type, "shape") else np.array(col.to_pylist()))
            for name, col in zip(table.column_names, table.columns, strict=True)}


@pytest.fixture(scope="module")
def built(messy_images, tiny_models, ray_local, tmp_path_factory):
    folder, expected = messy_images
    out = tmp_path_factory.mktemp("pyramids") / "messy"
    rc, stdout, stderr = run_cli(["pyramids", "--images", str(folder), "--out", str(out),
                                  "--dino", str(tiny_models["dino"]), "--clip", str(tiny_models["clip"]), *ARGS])
    return out, rc, stdout, stderr


def test_messy_folder_one_row_per_good_image_and_a_reason_per_bad_one(built, messy_images):
    out, rc, stdout, stderr = built
    folder, expected = messy_images
    assert rc == 0, stderr
    manifest = schema.read_manifest(out)
    good = sorted(str(folder / rel) for rel, kind in expected.items() if not kind)
    arrays = read_pyarrow(out)
    assert sorted(arrays["path"]) == good and manifest["rows"] == len(good)
    # ids hash the path under the folder: a copy of it elsewhere gets the same ids
    assert list(arrays["id"]) == sorted(schema.stable_id(rel) for rel, kind in expected.items() if not kind)
    failures = {f["path"]: f["reason"] for f in manifest["failures"]}
    assert {p: r.split(":")[0] for p, r in failures.items()} == {
        str(folder / rel): kind for rel, kind in expected.items() if kind} | {
        str(folder / "broken link.jpg"): "dangling symlink"}
    assert manifest["ignored"] == {".txt": 1, "(hidden)": 2}
    assert ("rows, 7 failures (corrupt 1, dangling symlink 1, empty file 1, not an image 2, too large 1, too small 1)"
            in stdout)
    assert "images/s" in stdout
    assert not list(out.parent.glob(".messy.*")) and not (out / "_failures").exists()


def test_manifest_describes_the_pyramid(built, tiny_models):
    manifest = schema.read_manifest(built[0])
    assert manifest["status"] == "ok"
    assert manifest["levels"] == SIZES and manifest["grids"] == [4, 8]
    assert manifest["dim"] == 48 and manifest["dtype"] == "float16" and manifest["thumb_size"] == 32
    assert manifest["dino"]["source"] == str(Path(tiny_models["dino"]).resolve()) and len(manifest["dino"]["hash"]) == 12
    assert manifest["clip"]["dim"] == 32
    assert {"decode", "to_rgb", "crop", "levels", "normalise", "thumb"} <= set(manifest["preprocessing"])
    assert manifest["preprocessing"]["min_side"] == 32 and manifest["preprocessing"]["max_pixels"] == 4_000_000
    assert manifest["created"] and manifest["raydino_version"]


def test_stored_tokens_equal_a_direct_transformers_forward(built, tiny_models):
    from transformers import AutoImageProcessor, Dinov2Model

    arrays = read_pyarrow(built[0])
    model = Dinov2Model.from_pretrained(str(tiny_models["dino"])).eval()
    processor = AutoImageProcessor.from_pretrained(str(tiny_models["dino"]))
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    crops = np.stack([decode_image(Path(p).read_bytes(), max(SIZES), min_side=32, max_pixels=4_000_000)
                      for p in arrays["path"]])
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    for size in SIZES:
        level = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        with torch.no_grad():
            hidden = model(pixel_values=(level - mean) / std).last_hidden_state
        grid = size // 14
        tokens, cls = arrays[schema.tokens_col(size)], arrays[schema.cls_col(size)]
        assert tokens.dtype == np.float16 and tokens.shape == (len(x), grid * grid, 48)
        torch.testing.assert_close(torch.tensor(tokens, dtype=torch.float32), hidden[:, 1:], rtol=2e-3, atol=2e-3)
        torch.testing.assert_close(torch.tensor(cls, dtype=torch.float32), hidden[:, 0], rtol=2e-3, atol=2e-3)
    thumb = F.interpolate(x, size=(32, 32), mode="bilinear", antialias=True, align_corners=False)
    thumb = thumb.mul(255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert arrays[schema.THUMB].dtype == np.uint8 and np.array_equal(arrays[schema.THUMB], thumb)
    assert arrays[schema.CLIP].shape == (len(x), 32)
    np.testing.assert_allclose(np.linalg.norm(arrays[schema.CLIP], axis=1), 1.0, rtol=1e-4)


def test_ray_data_and_pyarrow_read_the_same_arrays(built, ray_local):
    out = built[0]
    plain = read_pyarrow(out)
    batch = ray_local.data.read_parquet(str(out)).take_batch(batch_size=1000, batch_format="numpy")
    order = np.argsort(batch["id"])
    assert set(batch) == set(plain)
    for name, values in plain.items():
        np.testing.assert_array_equal(np.asarray(batch[name])[order], values, err_msg=name)
    loaded = schema.load_arrays(out)
    np.testing.assert_array_equal(loaded[schema.tokens_col(56)], plain[schema.tokens_col(56)])


def test_rerun_is_a_noop_and_other_settings_are_refused(built, messy_images, capsys):
    out = built[0]
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    manifest = schema.read_manifest(out)
    cfg = PyramidConfig(**manifest["config"])
    assert build_pyramids(cfg, str(messy_images[0]) + "/", out) == manifest
    assert "finished already" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    with pytest.raises(schema.ManifestMismatch, match="sizes=.*--overwrite"):
        build_pyramids(dataclasses.replace(cfg, sizes=[56]), str(messy_images[0]), out)
    with pytest.raises(schema.ManifestMismatch, match="field 'levels'"):
        schema.check_manifest(manifest, levels=[56, 84, 112])
    with pytest.raises(schema.ManifestMismatch, match="field 'dim'"):
        schema.check_manifest(manifest, levels=SIZES, dim=768)
    schema.check_manifest(manifest, levels=SIZES, dim=48, need_clip=True)


def test_overwrite_replaces_and_too_many_failures_exit_nonzero_with_a_manifest(built, messy_images, tiny_models,
                                                                               tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(built[0], out)
    folder, _ = messy_images
    src = tmp_path / "mostly-bad"
    src.mkdir()
    for rel in ["zero.jpg", "text.jpg", "random.png", "gray.png"]:
        shutil.copy(folder / rel, src)
    argv = ["pyramids", "--images", str(src), "--out", str(out), "--dino", str(tiny_models["dino"]), *ARGS]
    rc, _, stderr = run_cli(argv)
    assert rc == 2 and "not '" in stderr and "--overwrite" in stderr  # another source: refused, left alone
    assert schema.read_manifest(out) == schema.read_manifest(built[0])
    rc, _, stderr = run_cli([*argv, "--overwrite"])
    assert rc == 2 and "3 of 4 images failed, more than max_failure_fraction=0.5" in stderr
    manifest = schema.read_manifest(out)
    assert manifest["status"] == "failed" and manifest["rows"] == 0 and len(manifest["failures"]) == 3
    assert manifest["source"] == str(src) and not list(out.glob("*.parquet"))
    assert not list(tmp_path.glob(".copy.*"))
    with pytest.raises(schema.ManifestMismatch, match="'rows' is 0"):
        schema.check_manifest(manifest, levels=SIZES)


def test_empty_input_unknown_model_and_missing_source_are_clear_errors(tiny_models, faces_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("no images here\n")
    out = tmp_path / "out"
    rc, _, stderr = run_cli(["pyramids", "--images", str(empty), "--out", str(out),
                             "--dino", str(tiny_models["dino"]), *ARGS])
    assert rc == 2 and "holds no image file" in stderr  # refused before Ray starts: nothing written
    assert not out.exists()

    one = tmp_path / "one"  # a usable folder: what is wrong below is the model, the source or the sizes
    one.mkdir()
    shutil.copy(next(faces_dir.glob("*.png")), one)
    rc, _, stderr = run_cli(["pyramids", "--images", str(one), "--out", str(tmp_path / "o2"),
                             "--dino", str(tmp_path / "no-such-model"), *ARGS])
    assert rc == 2 and "tiny-models" in stderr and not (tmp_path / "o2").exists()
    rc, _, stderr = run_cli(["pyramids", "--images", str(tmp_path / "nothing"), "--out", str(tmp_path / "o3"),
                             "--dino", str(tiny_models["dino"]), *ARGS])
    assert rc == 2 and "--images" in stderr and "no such folder" in stderr
    rc, _, stderr = run_cli(["pyramids", "--images", str(one), "--out", str(tmp_path / "o4"),
                             "--dino", str(tiny_models["dino"]), "--sizes", "50,100", "pyramids.clip="])
    assert rc == 2 and "--sizes 50,100: every level must be a positive multiple of 14" in stderr
    assert not (tmp_path / "o4").exists()


def test_pipeline_computes_pyramids_after_the_tiny_models():
    cfg = load_config("demo")
    steps = plan(cfg)
    names = [s.name for s in steps]
    assert names.index("feature pyramids") == names.index("tiny models") + 1
    step = steps[names.index("feature pyramids")]
    assert step.needs_ray and step.marker == Path(cfg.out) / "pyramids" / schema.MANIFEST
    # eval.compare_loss trains the other loss too, right after the run's own training, into runs/compare-<kind>
    assert names[names.index("progressive training") + 1] == "flow prior"  # the demo's minutes go to its own run
    steps = plan(load_config("demo", overrides=["eval.compare_loss=energy"]))
    compare = steps[[s.name for s in steps].index("progressive training") + 1]
    assert compare.name == "comparison: the same run with loss.kind=energy" and compare.needs_ray
    assert compare.marker == Path(cfg.out) / "runs" / "compare-energy" / "eval.json"
    assert "comparison" not in " ".join(s.name for s in plan(load_config("demo", overrides=["eval.compare_loss="])))
