"""Benchmark records: each bench run is one JSON file saying what measured what, and how.

A figure without its machine, library versions and command cannot be checked
or compared, so every bench result starts with :func:`header`, and ``--out``
may name a folder (``docs/benchmarks/``), where :func:`save` gives each run a
file of its own instead of overwriting the last one.

The measuring itself is here too (timing, peak memory, the random DINOv2 the
benches run), so that two benches' figures of the same kind are taken the
same way and can be set side by side.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

VERSIONS = ("torch", "transformers", "ray", "pyarrow", "numpy")
# the DINOv2 sizes ``--arch`` names (besides ``tiny``), as the hub's configs give them
ARCHS = {
    "vits14": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                   image_size=518),
    "vitb14": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14,
                   image_size=518),
}


def machine() -> dict[str, Any]:
    """CPU model and cores, GPU name, library versions, load: what the figures were measured on."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average": os.getloadavg()[0],
    }


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


def _git_commit() -> str | None:
    """The commit of the checkout the bench ran from, when it is one (``+`` if it had local edits).

    A copy of the code inside another repository (a carry to a device
    machine) is not that repository's commit: None then.
    """
    root = Path(__file__).resolve().parents[2]
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        if Path(top).resolve() != root:
            return None
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+" if dirty else "")


def header(bench: str) -> dict[str, Any]:
    """The fields every record starts with: bench, time, command, commit, machine, versions."""
    return {
        "bench": bench,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "raydino " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("raydino", "cli.py", "__main__.py")
        else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git": _git_commit(),
        "machine": machine(),
        "versions": _versions(),
    }


def record_path(results: dict[str, Any], out: str | Path) -> Path:
    """``out`` itself, or, when it is a folder (existing, or written with a trailing /), a new file in it
    named by bench, machine and time."""
    if not (Path(out).is_dir() or str(out).endswith("/")):
        return Path(out)
    m = results["machine"]
    where = m["gpu"] or f"cpu{m['cores']}"
    slug = re.sub(r"[^a-z0-9]+", "-", where.lower().removeprefix("nvidia ")).strip("-")
    stamp = results["created"].replace(":", "").replace("-", "").removesuffix("+0000")
    return Path(out) / f"{results['bench']}_{slug}_{stamp}.json"


def save(results: dict[str, Any], out: str | Path | None) -> Path | None:
    """Write ``results`` as JSON (see :func:`record_path`); return where."""
    if not out:
        return None
    path = record_path(results, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"record: {path}", flush=True)
    return path


# --- measuring ------------------------------------------------------------------------------


def default_device(device: str | None) -> str:
    """``device``, or the GPU when there is one: a bench measures the fastest device unless told otherwise."""
    import torch

    return device or ("cuda" if torch.cuda.is_available() else "cpu")


def sync(device: str | torch.device) -> None:
    """Wait for the device's queued work: CUDA calls return before they finish, so a clock read needs this."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def seconds_per_call(fn: Callable[[], object], calls: int, device: str | torch.device, warmup: int = 0,
                     ready: Callable[[], object] | None = None) -> float:
    """Mean seconds of ``calls`` calls of ``fn``, after ``warmup`` untimed ones (allocator, autotuning, lazy init).

    ``ready`` is called between the warm-up and the clock's start: a barrier
    there makes copies in other processes time the same span.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    if ready is not None:
        ready()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    return (time.perf_counter() - start) / calls


def median_seconds(fn: Callable[[], object], device: str | torch.device, warmup: int = 2, repeats: int = 5) -> float:
    """Median seconds per call after warm-up: one slow call (a collection, a page fault) would skew a mean latency."""
    times = [seconds_per_call(fn, 1, device, warmup if i == 0 else 0) for i in range(repeats)]
    return sorted(times)[len(times) // 2]


def peak_rss_mib() -> float:
    """This process's peak resident memory so far."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_gpu_mib(device: str | torch.device | None = None) -> float:
    """The most GPU memory PyTorch has held for tensors on ``device`` (the current one by default)."""
    import torch

    return torch.cuda.max_memory_allocated(device) / 2**20


def descendants(root: int) -> list[int]:
    """Every process below ``root`` (Ray's raylet and its workers are children of the driver that started them).

    Built from each process's parent in ``/proc/*/stat``, which every Linux
    kernel has (``/proc/PID/task/*/children`` needs a kernel option).
    """
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
            children.setdefault(int(text.rsplit(")", 1)[1].split()[1]), []).append(int(text.split(" ", 1)[0]))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


class Peaks:
    """The peak of each figure ``read()`` returns, polled on a thread every ``every_s`` s while the block runs.

    Other processes' memory (Ray's workers, the object store) has no
    high-water mark this process can read at the end, and is gone once they
    exit, so it is sampled while they live.
    """

    def __init__(self, read: Callable[[], dict[str, float]], every_s: float) -> None:
        self.read, self.every_s = read, every_s
        self.peaks: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self) -> Peaks:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.wait(self.every_s):
            for name, value in self.read().items():
                self.peaks[name] = max(self.peaks.get(name, 0.0), value)


def save_random_dino(arch: str, out: Path) -> Path:
    """A random-weight DINOv2 of a named size, in the layout :func:`~raydino.models.loading.load_dino` reads.

    Speed does not depend on weights, and random ones need no download.
    ``save_tiny_dino`` writes the image-processor config (the one the hub
    DINOv2 models use) and the random-weights marker; the named architecture
    then replaces its tiny model.
    """
    import torch
    from transformers import Dinov2Config, Dinov2Model

    from raydino.models.tiny import save_tiny_dino

    save_tiny_dino(out)
    if arch != "tiny":
        torch.manual_seed(0)
        Dinov2Model(Dinov2Config(**ARCHS[arch])).save_pretrained(out)
    return out
