"""``raydino serve``: a trained run as a live text-to-face endpoint on Ray Serve (docs/serve.md)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from raydino.config import Config

log = logging.getLogger(__name__)


def describe(run: Path, teacher: bool) -> str:
    """Which flow prior the server samples, and what a code costs, read from its header."""
    from raydino.layout import Run
    from raydino.models.saved import load_prior

    return load_prior(Run(run), teacher=teacher).describe()


def serve_run(run: Path, cfg: Config, port: int, host: str = "127.0.0.1", address: str | None = None) -> None:
    """Serve ``run`` at ``http://HOST:PORT/`` until Ctrl-C or SIGTERM, then take the app down.

    Locally the Ray instance goes with it; on a cluster (``address``) only
    this application is deleted, and Serve stays up for the others.
    """
    import ray
    from ray import serve

    from raydino.ray_init import init_ray
    from raydino.serve.app import APP_NAME, application

    init_ray(address)
    try:
        serve.start(http_options={"host": host, "port": port})
        serve.run(application(run, cfg), name=APP_NAME, route_prefix="/")
        print(f"serving {run} at http://{host}:{port}/ (the page; API: POST /generate, POST /vary, GET /healthz); "
              f"prior: {describe(run, cfg.serve.teacher)}; Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    finally:
        if address:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
            ray.shutdown()
        log.info("raydino serve: %s is down", APP_NAME)
