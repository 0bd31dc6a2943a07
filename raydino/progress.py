"""Progress of the long steps: done / total, rate and time left, where the user is looking.

The work runs in Ray workers and actors, the line the user watches is the
driver's. So each worker keeps its count in a small JSON file
(:class:`CountFile`) in the step's output folder, which every node and the
driver share (checkpoints are written there too), and :func:`watch` on the
driver sums those files twice a second. On a terminal the line is a live
bar redrawn in place; anywhere else (``> run.log``, a Ray job's log) it is a
new line every :data:`LOG_EVERY_S` seconds, so a log file shows how fast a
step went and how long it had left.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

LOG_EVERY_S = 5.0   # a log line this often when the output is not a terminal
REDRAW_S = 0.2      # a terminal's bar at most this often
POLL_S = 0.5        # the driver reads the counters this often
WRITE_EVERY_S = 1.0  # a worker writes its counter at most this often


class CountFile:
    """One worker's count of work done, in ``path`` (written whole, then renamed: never read half written)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.last = 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < WRITE_EVERY_S:
            return
        self.last = now
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
        tmp.write_text(json.dumps({"done": int(done)}))
        os.replace(tmp, self.path)


def read_done(root: str | Path, pattern: str) -> int:
    """The sum of the counters matching ``pattern`` under ``root`` (0 before any is written)."""
    total = 0
    for path in Path(root).glob(pattern):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            total += int(json.loads(path.read_text())["done"])
    return total


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


def progress_line(label: str, done: int, total: int, unit: str, rate: float | None, width: int = 24) -> str:
    """``label  [#####.....]  120/256 images  47%  12.3 images/s  11s left``."""
    frac = min(done / total, 1.0) if total else 0.0
    bar = "#" * round(frac * width) + "." * (width - round(frac * width))
    line = f"{label}  [{bar}]  {done}/{total} {unit}  {frac:4.0%}"
    if rate:
        line += f"  {rate:.1f} {unit}/s  {_duration(max(total - done, 0) / rate)} left"
    return line


@dataclass
class Tracker:
    """What :func:`watch` shows for one step: its name, how much there is, and how to count what is done."""

    label: str
    total: int
    unit: str
    count: Callable[[], int]


def counted(label: str, total: int, unit: str, root: str | Path, pattern: str) -> Tracker:
    """A :class:`Tracker` of the counters matching ``pattern`` under ``root`` (:func:`read_done`)."""
    return Tracker(label, total, unit, lambda: read_done(root, pattern))


class Bar:
    """Renders a :class:`Tracker`'s count: in place on a terminal, as log lines elsewhere."""

    def __init__(self, tracker: Tracker, stream: TextIO | None = None, live: bool | None = None):
        self.tracker, self.stream = tracker, stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.start = time.monotonic()
        # The rate is measured from the first time the count moves: not over the step's start-up (Ray
        # Train's workers, model loads), nor over the count a resumed step starts from.
        self.initial: int | None = None
        self.origin: tuple[float, int] | None = None
        self.shown, self.last_done = 0.0, -1

    def rate(self, done: int) -> float | None:
        if self.origin is None or done <= self.origin[1]:
            return None
        return (done - self.origin[1]) / max(time.monotonic() - self.origin[0], 1e-9)

    def update(self, done: int) -> None:
        now = time.monotonic()
        if self.initial is None:
            self.initial = done
        elif self.origin is None and done != self.initial:
            self.origin = (now, done)
        if now - self.shown < (REDRAW_S if self.live else LOG_EVERY_S) or (not self.live and done == self.last_done):
            return
        self.shown, self.last_done = now, done
        t = self.tracker
        line = progress_line(t.label, done, t.total, t.unit, self.rate(done))
        self.stream.write(f"\r{line}\033[K" if self.live else line + "\n")
        self.stream.flush()

    def close(self, done: int) -> None:
        t = self.tracker
        line = progress_line(t.label, done, t.total, t.unit, self.rate(done))
        line += f"  in {_duration(time.monotonic() - self.start)}"
        self.stream.write(f"\r{line}\033[K\n" if self.live else line + "\n")
        self.stream.flush()


@contextlib.contextmanager
def watch(tracker: Tracker, stream: TextIO | None = None, live: bool | None = None) -> Iterator[Bar]:
    """Show ``tracker``'s progress while the block runs, from a thread, and a last line when it ends."""
    bar = Bar(tracker, stream, live)
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(POLL_S):
            bar.update(tracker.count())

    thread = threading.Thread(target=poll, name=f"progress {tracker.label}", daemon=True)
    thread.start()
    try:
        yield bar
    finally:
        stop.set()
        thread.join()
        bar.close(tracker.count())
