"""`raydino run --preset demo --images DIR` on a user's folder: no captions, broken files, nested folders.

The whole run, in-process on the session's Ray, with the session's tiny
models copied in (their training is tests/test_encoders.py's business) and
a schedule of a few steps: what is under test is that every step gets
through such a folder, and that the skipped files are named where a user
looks (the manifests, the report's run section).
"""

from __future__ import annotations

import json
import logging
import re
import shutil

import yaml
from conftest import write_messy_folder

from raydino.cli import main
from raydino.layout import Run

SMALL = ["data.synth_count=8", "train.num_workers=1", "train.stages.0.images=32", "train.stages.1.images=32",
         "train.val_count=8", "train.sample_every=1000", "tune.trials=0", "eval.n=8", "eval.compare_loss=",
         "sample.n=2", "prior.steps=20", "prior.num_workers=1", "prior.width=64", "prior.cpus_per_worker=1",
         "model.channels=[16,8]", "model.code_dim=8",
         # the one-step student, its Ray Data teacher actor and Ray Train fit, at their smallest
         "distill.steps=4", "distill.pairs=32", "distill.batch_size=16", "distill.teacher_steps=2",
         "distill.teacher_batch=16", "distill.cpus_per_worker=1", "distill.checkpoint_every=2"]


def test_a_messy_folder_without_captions_goes_through_the_whole_run(tmp_path, faces_dir, tiny_models, ray_local,
                                                                    capsys, caplog):
    images = tmp_path / "my photos"
    images.mkdir()
    for i, face in enumerate(sorted(faces_dir.glob("*.png"))[:24]):  # faces, but no metadata.parquet: no captions
        shutil.copy(face, images / f"IMG_{i:04d}.png")
    expected = write_messy_folder(images / "messy", faces_dir)
    # a web page saved as .jpg, named so that the split holds it out: its failure is in the held-out manifest
    (images / "messy" / "saved page 0.jpg").write_text("<!doctype html><html><body>a photo page</body></html>\n")
    bad = {f"messy/{rel}": kind for rel, kind in expected.items() if kind} | {"messy/broken link.jpg": "dangling symlink",
                                                                             "messy/saved page 0.jpg": "not an image"}
    out = tmp_path / "out"
    for key in ("dino", "fd", "clip", "attributes", "segmenter"):
        shutil.copytree(tiny_models[key], out / "models" / tiny_models[key].name)
    shutil.copy(tiny_models["dino"].parent / "tiny-models.json", out / "models")

    caplog.set_level(logging.INFO, logger="raydino")
    assert main(["run", "--preset", "demo", "--images", str(images), "--out", str(out), *SMALL]) == 0
    stdout = capsys.readouterr().out

    assert "text control: off for this run" in caplog.text and "has no captions" in caplog.text
    # the prior's 64 codes per step do not fit in this folder: lowered, said, recorded (it once died here)
    fitted = json.loads((out / "fitted.json").read_text())
    assert any(c.startswith(f"prior.batch_size 64 -> {fitted['training_rows']}:") for c in fitted["changes"])
    assert f"fitted to the data: prior.batch_size 64 -> {fitted['training_rows']}" in caplog.text
    assert yaml.safe_load((out / "config.yaml").read_text())["pyramids"]["clip"] == ""
    student = json.loads((out / "runs" / "train" / "student.json").read_text())  # distilled, unconditional
    assert student["step"] == 4 and student["conditions"] == 0 and (out / "runs" / "train" / Run.STUDENT).is_file()
    manifests = [json.loads((out / p / "manifest.json").read_text()) for p in ("pyramids", "pyramids-val")]
    failed = {f["path"]: f["reason"] for m in manifests for f in m["failures"]}
    assert {p.removeprefix(f"{images}/"): r.split(":")[0] for p, r in failed.items()} == bad
    assert [f["path"] for f in manifests[1]["failures"]] == [str(images / "messy" / "saved page 0.jpg")]
    report = (out / "report" / "index.html").read_text()
    run_section = report[report.index('<section id="run">'):]
    assert f"{len(bad)} files of <code>{images}</code> could not be used" in run_section
    for rel in bad:
        assert str(images / rel) in run_section, rel
    assert "has no captions" in run_section
    assert "could not fill every size the preset asks for" in run_section and "prior.batch_size 64 -&gt;" in run_section
    for label in ("extraction", "training"):  # the steps' own progress, as log lines (not a terminal here), all done
        assert any(re.match(rf"{label}  \[#+\]  (\d+)/\1 images  100%.* in ", line) for line in stdout.splitlines()), label


def test_a_read_only_batch_from_the_object_store_encodes_without_a_warning(tmp_path):
    """Ray hands the encoder zero-copy, read-only arrays; wrapping one in a tensor warned once per batch."""
    import warnings

    import numpy as np

    from raydino.models.tiny import save_tiny_dino
    from raydino.pyramids.features import PyramidEncoder

    encoder = PyramidEncoder(str(save_tiny_dino(tmp_path / "dino")), [56], device="cpu", bf16=False)
    images = np.zeros((2, 56, 56, 3), np.uint8)
    images.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = encoder({"image": images, "id": ["a", "b"], "path": ["a", "b"]})
    assert out["tokens_56"].shape == (2, 16, 48)
