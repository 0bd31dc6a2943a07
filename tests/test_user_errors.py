"""Every error a user can cause on the command line: one sentence naming the flag or file, exit 2, nothing written.

Each case runs the CLI in-process (``main``), as a user's shell would: the
checks run before any Ray work or any file is written, so these are fast.
"""

from __future__ import annotations

import pytest

from raydino.cli import main


def _fails(capsys, argv: list[str], *named: str) -> str:
    """Run ``argv``; assert exit 2, one error line that names each of ``named``, no traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("raydino ")]
    assert len(lines) == 1, err
    for word in named:
        assert word in lines[0], lines[0]
    assert ": " in lines[0] and lines[0].rstrip()[-1] not in ":,", lines[0]  # says what to do after what is wrong
    return lines[0]


def test_a_missing_images_folder_is_named_and_nothing_is_written(capsys, tmp_path):
    out = tmp_path / "out"
    line = _fails(capsys, ["run", "--images", str(tmp_path / "no such folder"), "--out", str(out)],
                  "--images", "no such folder")
    assert "check the path" in line
    assert not out.exists()


def test_an_empty_images_folder_is_named_and_nothing_is_written(capsys, tmp_path):
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "notes.txt").write_text("not an image\n")
    out = tmp_path / "out"
    _fails(capsys, ["run", "--images", str(tmp_path / "photos"), "--out", str(out)], "--images", "holds no image file")
    assert not out.exists()


def test_a_folder_with_no_usable_image_is_named_with_the_reasons(capsys, tmp_path):
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "page.jpg").write_text("<html><body>saved from a browser</body></html>\n")
    (photos / "sub" / "zero.png").write_bytes(b"")
    out = tmp_path / "out"
    line = _fails(capsys, ["run", "--images", str(photos), "--out", str(out)], "--images", "none of its 2 image files")
    assert "not an image 1" in line and "empty file 1" in line
    assert not out.exists()


def test_a_missing_model_directory_is_named_by_its_config_key(capsys, tmp_path, faces_dir):
    out = tmp_path / "out"
    _fails(capsys, ["run", "--preset", "ffhq256", "--images", str(faces_dir), "--out", str(out),
                    f"pyramids.dino={tmp_path / 'weights' / 'dinov2-base'}"], "pyramids.dino=", "no model directory")
    assert not out.exists()


def test_a_bad_override_is_named(capsys, tmp_path):
    out = tmp_path / "out"
    _fails(capsys, ["run", "--out", str(out), "train.num_wrokers=1"], "train.num_wrokers")
    _fails(capsys, ["run", "--out", str(out), "train.num_workers=two"], "train.num_workers", "int")
    _fails(capsys, ["run", "--out", str(out), "no_equals_sign"], "no_equals_sign")
    assert not out.exists()


@pytest.mark.parametrize("make", ["missing", "empty", "failed"])
def test_a_pyramid_folder_that_is_not_one_is_named(capsys, tmp_path, make):
    pyramids = tmp_path / "pyramids"
    if make != "missing":
        pyramids.mkdir()
    if make == "failed":
        (pyramids / "manifest.json").write_text('{"status": "failed", "error": "no readable image"}')
    out = tmp_path / "run"
    _fails(capsys, ["train", "--pyramids", str(pyramids), "--out", str(out)], "--pyramids", str(pyramids))
    assert not out.exists()


def _pyramid(folder):
    folder.mkdir()
    (folder / "manifest.json").write_text('{"status": "ok"}')
    return folder


def test_a_run_folder_that_is_not_one_is_named(capsys, tmp_path):
    run, pyramids = tmp_path / "run", _pyramid(tmp_path / "pyramids")
    run.mkdir()
    _fails(capsys, ["report", "--run", str(run)], "--run", "no config.yaml")
    _fails(capsys, ["sample", "--run", str(run), "--out", str(tmp_path / "x.png"), "--prior"], "--run")
    _fails(capsys, ["eval", "--run", str(run), "--pyramids", str(pyramids)], "--run", "generator.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pyramids", "run"] and not any(run.iterdir())


def test_a_pyramid_given_as_the_run_is_named(capsys, tmp_path):
    pyramids = _pyramid(tmp_path / "pyramids")
    _fails(capsys, ["fit-codes", "--run", str(pyramids), "--pyramids", str(pyramids)], "--run", "is not a finished")
