"""Join a Ray cluster or start a local one: what every Ray-using command does first."""

from __future__ import annotations

import signal
import threading


def init_ray(address: str | None = None, data_progress: bool = False) -> None:
    """Join the cluster at ``address`` (or start a local Ray) unless this process already has Ray.

    One progress view: the steps' own lines, not Ray Data's per-operator bars
    (one set per split, per epoch), unless ``data_progress`` (``--ray-progress``).
    """
    import ray
    import ray.data

    ray.data.DataContext.get_current().enable_progress_bars = data_progress
    if not ray.is_initialized():
        handler = signal.getsignal(signal.SIGTERM)
        ray.init(address=address)
        if handler is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)  # ray.init installs sys.exit(15); the CLI says where to resume
