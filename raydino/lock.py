"""One writer per output folder: an advisory ``fcntl`` lock beside it.

``train``, ``train-prior``, ``tune``, ``pyramids`` and ``run`` hold the lock
of the folder they write for as long as they run, so two processes started
into one ``--out`` cannot mix checkpoints, TensorBoard files and results: the
second stops with one sentence naming the holder. The lock file sits beside
the folder (``.NAME.lock``), not in it, because ``raydino pyramids``
replaces its output folder by a rename.

The kernel drops an ``flock`` when its process dies, however it dies; what a
``kill -9`` leaves is only the file, naming a dead process, and the next run
takes it over with a log line. A folder whose parent folder is held (``raydino
run`` into ``OUT`` holds ``OUT``; ``raydino train --out OUT/runs/train``)
counts as held too. ``flock`` is per host on most network filesystems: on a
shared filesystem, run one writer per folder by hand.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from raydino.errors import UserError

log = logging.getLogger(__name__)


def lock_path(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.lock"


def _holder(path: Path) -> dict:
    try:
        return json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}


def _describe(holder: dict) -> str:
    return (f"`{holder.get('command', 'raydino')}` (pid {holder.get('pid', '?')} on {holder.get('host', '?')}, "
            f"since {holder.get('since', '?')})")


def _busy(folder: Path, held: Path, flag: str) -> UserError:
    holder = _holder(held)
    what = "" if held == lock_path(folder) else f" (it is inside {held.parent / held.name[1:-5]}, which is held)"
    return UserError(f"{flag} {folder} is in use by {_describe(holder)}{what}: wait for it to end, or choose "
                     f"another {flag}")


def _check_parents(folder: Path, flag: str) -> None:
    """A held parent folder (``raydino run``'s ``OUT``) holds its children too."""
    for parent in folder.parents:
        path = lock_path(parent) if parent.parent != parent else None
        if path is None or not path.is_file():
            continue
        with open(path) as f:
            try:
                fcntl.flock(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                raise _busy(folder, path, flag) from None
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def hold(folder: str | Path, command: str, flag: str = "--out") -> Iterator[None]:
    """Hold ``folder``'s lock while the block runs; a live holder is a :class:`UserError`."""
    folder = Path(folder).expanduser().resolve()
    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    _check_parents(folder, flag)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise _busy(folder, path, flag) from None
        # the holder before us may have removed the file between our open and our lock: lock the current one
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)
    left = _holder(path)
    if left:
        log.warning("%s: taking over the lock left by %s, which is no longer running", folder, _describe(left))
    me = {"command": command, "pid": os.getpid(), "host": socket.gethostname(),
          "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps(me).encode())
    try:
        yield
    finally:
        path.unlink(missing_ok=True)  # while still holding it: a waiting opener sees a new file and retries
        os.close(fd)
