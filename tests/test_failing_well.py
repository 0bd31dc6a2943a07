"""Failing well: bad values and paths refused before Ray, one writer per folder, corrupt shards named, clean stops.

One test per finding of the drills (docs/failing-well.md), through the CLI
as a user calls it: the exit code, the one sentence naming the key, flag or
file, and nothing written. None of them starts Ray: the point is that Ray
never starts. The small-folder runs are in tests/test_own_folder.py.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import interruptible
from test_user_errors import _fails

from raydino.config import ConfigError, load_config
from raydino.data_fit import fit_to_rows
from raydino.errors import UserError
from raydino.lock import hold, lock_path
from raydino.pyramids import schema
from raydino.pyramids.publish import remove_leftovers


def _nothing_written(tmp_path: Path, *keep: str) -> None:
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(keep)


@pytest.mark.parametrize(("override", "named"), [
    ("loss.kind=foo", "loss.kind=foo"),
    ("model.max_resolution=48", "model.max_resolution=48"),
    ("model.code_resolution=8", "model.code_resolution=8"),
    ("prior.cpus_per_worker=0", "prior.cpus_per_worker=0"),
    ("prior.ray_log_level=LOUD", "prior.ray_log_level=LOUD"),
    ("prior.max_failures=-1", "prior.max_failures=-1"),
    ("train.num_workers=0", "train.num_workers=0"),
    ("train.stages.0.batch_size=15", "train.stages.0.batch_size=15"),
    ("prior.patch=3", "prior.patch=3"),
    ("tiny.processes=0", "tiny.processes=0"),
    ("tiny.clip_image_size=60", "tiny.clip_image_size=60"),
    ("sample.edit_t=1.5", "sample.edit_t=1.5"),
    ("prior.condition=words", "prior.condition=words"),
    ("prior.caption_variants=0", "prior.caption_variants=0"),
    ("eval.compare_loss=fancy", "eval.compare_loss=fancy"),
    ("distill.guidance=[5.0,1.0]", "distill.guidance=[5.0, 1.0]"),
    ("distill.pairs=8", "distill.pairs=8 must be at least distill.batch_size=64"),
    ("distill.uncond_share=1.5", "distill.uncond_share=1.5"),
])
def test_a_bad_value_is_refused_where_the_config_is_loaded(capsys, tmp_path, train_pyramids, override, named):
    _fails(capsys, ["train", "--pyramids", str(train_pyramids), "--out", str(tmp_path / "run"), override], named)
    _fails(capsys, ["run", "--out", str(tmp_path / "out"), override], named)
    _nothing_written(tmp_path)


def test_the_library_gives_the_same_sentence_as_the_command_line():
    from raydino.losses import DinoPyramidLoss

    cfg = load_config("demo")
    with pytest.raises(ConfigError, match="loss.kind=foo is not one of energy, regression"):
        DinoPyramidLoss(None, cfg.pyramids.sizes, type(cfg.loss)(kind="foo"))


def test_a_sweep_without_its_held_out_pyramid_is_refused_before_ray(capsys, tmp_path, train_pyramids):
    _fails(capsys, ["tune", "--pyramids", str(train_pyramids), "--out", str(tmp_path / "sweep")],
           "tune.metric=heldout/eval_dist", "--holdout")
    _nothing_written(tmp_path)


def test_an_existing_run_is_refused_unless_resume_or_overwrite(capsys, tmp_path, train_pyramids):
    run = tmp_path / "run"
    run.mkdir()
    (run / "generator.safetensors").write_bytes(b"the first run's weights")
    line = _fails(capsys, ["train", "--pyramids", str(train_pyramids), "--out", str(run)], "--out", str(run))
    assert "--resume" in line and "--overwrite" in line
    _fails(capsys, ["train", "--pyramids", str(train_pyramids), "--out", str(run), "--resume", "--overwrite"],
           "--resume and --overwrite")
    assert (run / "generator.safetensors").read_bytes() == b"the first run's weights"
    _nothing_written(run, "generator.safetensors")


def test_an_out_under_a_file_or_on_a_read_only_disk_is_named(capsys, tmp_path, train_pyramids, monkeypatch):
    (tmp_path / "notes").write_text("a file, not a folder\n")
    for command in (["run"], ["train", "--pyramids", str(train_pyramids)],
                    ["tune", "--pyramids", str(train_pyramids), "--holdout", str(train_pyramids)]):
        _fails(capsys, [*command, "--out", str(tmp_path / "notes" / "out")], "--out", "is a file, not a folder")

    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("tempfile.mkstemp", read_only)
    _fails(capsys, ["run", "--out", str(tmp_path / "out")], "--out", "Read-only file system")
    _nothing_written(tmp_path, "notes")


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock until it is killed."""
    code = ("import sys, time; from raydino.lock import hold\n"
            f"with hold({str(folder)!r}, 'raydino train'):\n"
            "    print('held', flush=True); time.sleep(120)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_second_writer_into_one_folder_is_refused_naming_the_first(capsys, tmp_path, train_pyramids, tiny_models):
    out, dino = tmp_path / "out", f"pyramids.dino={tiny_models['dino']}"
    out.mkdir()
    (out / "metrics.json").write_text('{"from": "run A"}')
    first = _holder(out)
    try:
        line = _fails(capsys, ["train", "--pyramids", str(train_pyramids), "--out", str(out), "--overwrite", dino],
                      "--out", str(out), f"pid {first.pid}", socket.gethostname())
        assert "raydino train" in line
        # a folder inside a held one is held too: `raydino run` into OUT holds OUT/runs/train
        _fails(capsys, ["train", "--pyramids", str(train_pyramids), "--out", str(out / "runs" / "train"), dino],
               f"pid {first.pid}", f"inside {out}")
        assert (out / "metrics.json").read_text() == '{"from": "run A"}'  # --overwrite did not get to remove it
    finally:
        first.kill()
        first.wait()


def test_a_lock_left_by_a_killed_process_is_taken_over_with_a_log_line(tmp_path, caplog):
    out = tmp_path / "out"
    first = _holder(out)
    first.send_signal(signal.SIGKILL)
    first.wait()
    assert json.loads(lock_path(out.resolve()).read_text())["pid"] == first.pid  # what kill -9 leaves
    caplog.set_level(logging.WARNING, logger="raydino")
    with hold(out, "raydino run"):
        assert json.loads(lock_path(out.resolve()).read_text())["pid"] == os.getpid()
    assert f"pid {first.pid}" in caplog.text and "no longer running" in caplog.text
    assert not lock_path(out.resolve()).exists()  # released: nothing left for the next run to take over


def _copy(pyramid: Path, to: Path) -> Path:
    shutil.copytree(pyramid, to)
    return to


def test_a_truncated_shard_is_named_before_ray_starts(capsys, tmp_path, train_pyramids):
    pyramid = _copy(train_pyramids, tmp_path / "pyramids")
    shard = Path(schema.shard_files(pyramid)[1])
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    line = _fails(capsys, ["train", "--pyramids", str(pyramid), "--out", str(tmp_path / "run")], str(shard))
    assert "raydino pyramids --overwrite" in line
    _nothing_written(tmp_path, "pyramids")


def test_damaged_shards_are_named_with_what_is_wrong(tmp_path, train_pyramids):
    import numpy as np
    import pyarrow.parquet as pq

    pyramid = _copy(train_pyramids, tmp_path / "pyramids")
    shard = schema.shard_files(pyramid)[0]
    table = pq.read_table(shard)
    col = schema.tokens_col(56)
    values = schema.to_numpy(table[col]).copy()
    values[1, 2, :5] = np.inf
    values[3, 0, 0] = np.nan
    pq.write_table(table.set_column(table.column_names.index(col), col, schema.tensor_array(values)), shard)
    other = schema.shard_files(pyramid)[1]
    Path(other).write_bytes(Path(other).read_bytes()[:100] + b"\0" * 4096 + Path(other).read_bytes()[4196:])
    found = schema.damaged_shards(pyramid, [col, schema.tokens_col(112)])
    assert found[shard] == "6 non-finite values" and found[other].startswith("cannot be read") and len(found) == 2


def test_a_run_meeting_non_finite_rows_stops_before_a_checkpoint_holds_them(train_pyramids, tiny_models, tmp_path):
    from test_train_loop import PoisonedSession, local_cfg

    from raydino.pyramids.batch import columns
    from raydino.train import loop

    cfg = local_cfg(str(tiny_models["dino"]))
    session = PoisonedSession(train_pyramids, columns(cfg.pyramids.sizes), bad={3}, checkpoints=tmp_path / "ckpt")
    assert loop.fit_generator(cfg, train_pyramids, tmp_path / "run", session) == {"nonfinite_input_step": 3}
    assert session.reports == []  # no checkpoint holds weights trained on them
    # (every rank at once: tests/test_data_parallel.py, two gloo workers)


def test_batches_the_data_cannot_fill_are_fitted_with_a_line_each(caplog):
    cfg = load_config("demo")  # batches of 16 on 2 workers, 64 codes per prior step, eval.n 512
    caplog.set_level(logging.INFO, logger="raydino")
    fitted, notes = fit_to_rows(cfg, rows=7, held_out=2)
    assert [s.batch_size for s in fitted.train.stages] == [6, 6] and fitted.prior.batch_size == 7
    assert [s.steps for s in fitted.train.stages] == [s.steps for s in cfg.train.stages]  # fewer images, same steps
    assert fitted.eval.n == 2 and "the run has no evaluation" in notes[-1]
    assert len(notes) == 4 and all(note in caplog.text for note in notes)
    assert fit_to_rows(fitted, rows=7, held_out=2)[1] == []  # a fitted config fits
    assert cfg.prior.batch_size == 64  # the config given is not changed
    with pytest.raises(UserError, match="has 1 rows, fewer than the 2 workers"):
        fit_to_rows(cfg, rows=1)


def test_a_folder_too_small_for_the_workers_is_refused_before_anything_is_written(capsys, tmp_path, faces_dir):
    photos = tmp_path / "photos"
    photos.mkdir()
    for face in sorted(faces_dir.glob("*.png"))[:2]:  # a third of 2 is none: nothing to evaluate on
        shutil.copy(face, photos)
    _fails(capsys, ["run", "--images", str(photos), "--out", str(tmp_path / "out")], f"--images {photos}",
           "no row for the held-out side")
    _nothing_written(tmp_path, "photos")


def test_leftovers_of_a_killed_extraction_are_removed_with_a_log_line(tmp_path, caplog):
    out = tmp_path / "pyramids"
    for name in (".pyramids.tmp-1a2b3c4d", ".pyramids.old-5e6f7a8b", ".pyramids-val.tmp-99999999"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "part-00000.parquet").write_bytes(b"half a shard")
    caplog.set_level(logging.WARNING, logger="raydino")
    remove_leftovers(out)
    _nothing_written(tmp_path, ".pyramids-val.tmp-99999999")  # another output's are not this one's to remove
    assert caplog.text.count("did not finish") == 2


@pytest.mark.parametrize(("sig", "code", "said"), [(signal.SIGINT, 130, "interrupted (Ctrl-C)"),
                                                    (signal.SIGTERM, 143, "terminated (SIGTERM)")])
def test_a_stopped_command_says_where_to_resume_without_a_traceback(tmp_path, sig, code, said):
    out = tmp_path / "out"
    argv = ["run", "--out", str(out), "data.synth_count=100000", "tune.trials=0"]  # long enough to be stopped
    proc = subprocess.Popen([sys.executable, "-m", "raydino.cli", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=interruptible)
    assert proc.stdout.readline().startswith("[1/")  # the first step has begun
    time.sleep(0.5)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"raydino run: {said}; resume with the same command" in err and f"--out {out}" in err
    assert not (tmp_path / ".out.lock").exists()  # the lock went with it


@pytest.mark.parametrize(("flag", "named"), [(["--actors", "0"], "--actors 0"),
                                             (["--max-failure-fraction", "2"], "--max-failure-fraction 2.0"),
                                             (["--sizes", "50,100"], "--sizes 50,100")])
def test_a_bad_extraction_flag_is_named_before_ray(capsys, tmp_path, faces_dir, flag, named):
    _fails(capsys, ["pyramids", "--images", str(faces_dir), "--out", str(tmp_path / "pyramids"), *flag], named)
    _nothing_written(tmp_path)


def test_workers_asking_for_more_cpus_than_the_cluster_has_are_named():
    """Ray Train waits silently for CPUs that a fixed cluster never gets: the drivers say so first."""
    from raydino.train.trainer import cpus_short

    assert cpus_short(1, 2, 2.0) is None and cpus_short(2, 1, 2.0) is None
    said = cpus_short(2, 2, 2.0)
    assert said is not None and "2 workers x 2 CPUs = 4 CPUs, and the cluster has 2" in said
    assert "cpus_per_worker" in said
