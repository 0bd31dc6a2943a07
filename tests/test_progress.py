"""The long steps' progress: workers' counters summed on the driver, a live bar or log lines."""

from __future__ import annotations

import io
import threading
import time

import pytest

from raydino import progress
from raydino.progress import CountFile, Tracker, progress_line, read_done, watch


def test_a_line_says_done_total_rate_and_time_left():
    line = progress_line("extraction", 120, 240, "images", 12.0)
    assert "extraction" in line and "120/240 images" in line and "50%" in line
    assert "12.0 images/s" in line and "10s left" in line
    assert "left" not in progress_line("training", 0, 10, "images", None)  # no rate before the first count moves


def test_workers_counters_are_summed_and_never_read_half_written(tmp_path):
    a, b = CountFile(tmp_path / "a.json"), CountFile(tmp_path / "b.json")
    a.update(5)
    b.update(7)
    a.update(6)  # within a second of the last write: skipped
    assert read_done(tmp_path, "*.json") == 12
    a.update(9, force=True)
    assert read_done(tmp_path, "*.json") == 16
    (tmp_path / "c.json").write_text('{"do')  # another writer's torn file is not counted
    assert read_done(tmp_path, "*.json") == 16
    assert read_done(tmp_path / "nothing yet", "*.json") == 0


@pytest.mark.parametrize("live", [False, True])
def test_watch_shows_the_count_while_the_step_runs(tmp_path, monkeypatch, live):
    monkeypatch.setattr(progress, "POLL_S", 0.02)
    monkeypatch.setattr(progress, "LOG_EVERY_S", 0.1)
    monkeypatch.setattr(progress, "REDRAW_S", 0.0)
    out = io.StringIO()
    counter = CountFile(tmp_path / "rank0.json")
    tracker = Tracker("training", 40, "images", lambda: read_done(tmp_path, "*.json"))
    with watch(tracker, stream=out, live=live):
        for done in range(0, 41, 8):
            counter.update(done, force=True)
            time.sleep(0.15)
    text = out.getvalue()
    assert text.endswith("\n") and "40/40 images" in text.splitlines()[-1] and " in " in text.splitlines()[-1]
    if live:  # redrawn in place: carriage returns, one final newline
        assert text.count("\r") > 3 and text.count("\n") == 1
    else:  # a log file: whole lines, a few of them, with the rate and time left
        lines = text.splitlines()
        assert len(lines) >= 3 and all(line.startswith("training  [") for line in lines)
        assert any("images/s" in line and "left" in line for line in lines[:-1])
    assert not [t for t in threading.enumerate() if t.name.startswith("progress ")]
