"""How the benches measure: timing, peak memory, and the random DINOv2 they run.

One way to take each kind of figure, so that two benches' figures of the
same kind can be set side by side.
"""

from __future__ import annotations

import resource
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

# the DINOv2 sizes ``--arch`` names (besides ``tiny``), as the hub's configs give them
ARCHS = {
    "vits14": dict(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, mlp_ratio=4, patch_size=14,
                   image_size=518),
    "vitb14": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, mlp_ratio=4, patch_size=14,
                   image_size=518),
}


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
