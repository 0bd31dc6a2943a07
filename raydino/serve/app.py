"""The Ray Serve application of ``raydino serve``: the HTTP API, the page, dynamic batching.

One deployment, ``FaceServer``, loads a run once per replica and answers
``/generate`` through ``@serve.batch``: requests that arrive within
``serve.batch_wait_s`` of each other share one generator pass
(:class:`raydino.serve.faces.Faces`). The model work runs in a thread, so
the replica keeps accepting (and batching) requests while a pass runs.
No ``from __future__ import annotations``: FastAPI reads the endpoints'
annotations (``Request``) at runtime.
"""

import asyncio
import base64
import json
import logging
import time
from collections import Counter
from importlib import resources
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from ray import serve

from raydino.config import Config, ServeConfig, load_config, to_dict
from raydino.data.images import UnreadableImage
from raydino.layout import Run
from raydino.serve.faces import Ask, BadRequest, Faces, ask_from, edit_from, png

APP_NAME = "raydino"
log = logging.getLogger(__name__)
api = FastAPI(title="raydino serve", docs_url=None, redoc_url=None, openapi_url=None)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request, limit: int) -> bytes:
    """The request body, refused past ``limit`` bytes (413) before it is all read when its length is declared."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise _TooLarge(int(declared), limit)
    body = await request.body()
    if len(body) > limit:
        raise _TooLarge(len(body), limit)
    return body


class _TooLarge(Exception):
    def __init__(self, size: int, limit: int):
        super().__init__(f"the body is {size} bytes, over serve.max_body_bytes={limit}")


@serve.deployment(name="FaceServer", max_ongoing_requests=256)
@serve.ingress(api)
class FaceServer:
    """A run's models, loaded once; every endpoint of the API."""

    def __init__(self, run: str, limits: dict):
        self.run = str(Path(run).resolve())
        self.limits = ServeConfig(**limits)
        self.faces = Faces(run, teacher=self.limits.teacher)
        self._generate.set_max_batch_size(self.limits.max_batch_size)
        self._generate.set_batch_wait_timeout_s(self.limits.batch_wait_s)
        self.batches: Counter[int] = Counter()  # requests per generator pass -> passes

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.02)  # set from serve.* in __init__
    async def _generate(self, asks: list[Ask]) -> list[tuple[list[bytes], int]]:
        def work() -> list[list[bytes]]:
            return [[png(image) for image in images] for images in self.faces.generate(asks)]

        pngs = await asyncio.to_thread(work)
        self.batches[len(asks)] += 1
        return [(images, len(asks)) for images in pngs]

    @api.get("/")
    def page(self) -> HTMLResponse:
        return HTMLResponse(resources.files("raydino.serve").joinpath("page.html").read_text())

    @api.get("/healthz")
    def healthz(self) -> dict:
        sampler = self.faces.sampler
        return {"status": "ok", "run": self.run, "resolution": sampler.resolution, "device": str(sampler.device),
                "text": self.faces.text, "max_images": self.limits.max_images,
                "guidance": self.faces.prior.cfg.guidance, "steps": self.faces.prior.cfg.sample_steps,
                "prior": self.faces.prior.describe()}

    @api.get("/stats")
    def stats(self) -> dict:
        """Requests per generator pass since the replica started: what batching merged."""
        requests = sum(size * passes for size, passes in self.batches.items())
        batched = sum(size * passes for size, passes in self.batches.items() if size > 1)
        return {"passes": sum(self.batches.values()), "requests": requests,
                "batched_share": batched / requests if requests else 0.0,
                "batch_sizes": {str(k): v for k, v in sorted(self.batches.items())}}

    @api.post("/generate")
    async def generate(self, request: Request) -> Response:
        """``{prompt?, n, seed?, cfg?, steps?}`` -> PNGs: base64 in JSON, or ``image/png`` for n = 1 when asked."""
        start = time.perf_counter()
        try:
            raw = await _body(request, self.limits.max_body_bytes)
            try:
                body = json.loads(raw)
            except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as exc:  # nested past the parser's depth
                return _error(400, f"the body is not JSON: {exc}")
            ask = ask_from(body, self.limits, self.faces.text)
        except _TooLarge as exc:
            return _error(413, str(exc))
        except BadRequest as exc:
            return _error(422, str(exc))
        images, batch = await self._generate(ask)
        latency = round((time.perf_counter() - start) * 1000, 2)
        if ask.n == 1 and "image/png" in request.headers.get("accept", ""):
            return Response(images[0], media_type="image/png",
                            headers={"X-Latency-Ms": str(latency), "X-Batch-Size": str(batch)})
        return JSONResponse({"images": [base64.b64encode(b).decode() for b in images], "n": ask.n, "seed": ask.seed,
                             "prompt": ask.prompt, "latency_ms": latency, "batch_size": batch})

    @api.post("/vary")
    async def vary(self, request: Request, t: float = 0.5, n: int = 4, seed: int = 0, prompt: str | None = None,
                   cfg: str | None = None) -> Response:
        """An uploaded image (the raw body) -> its reconstruction and variations along the flow at ``t``.

        With ``prompt`` (and ``cfg``, its guidance) the variations are edits toward the prompt: this face, but
        smiling. The answer echoes the guidance the edits had, the prior's own when ``cfg`` is left out.
        """
        start = time.perf_counter()
        try:
            image = await _body(request, self.limits.max_body_bytes)
        except _TooLarge as exc:
            return _error(413, str(exc))
        if not 0 <= t <= 1:
            return _error(422, f"t={t} must be in [0, 1]")
        if not 1 <= n <= self.limits.max_images:
            return _error(422, f"n={n} must be in [1, {self.limits.max_images}]")
        if seed < 0:
            return _error(422, f"seed={seed} must be at least 0")
        try:
            prompt, guidance = edit_from(prompt, cfg, self.limits, self.faces.text)
        except BadRequest as exc:
            return _error(422, str(exc))
        if prompt is not None and guidance is None:
            guidance = self.faces.prior.cfg.guidance
        try:
            images = await asyncio.to_thread(self.faces.vary, image, t, n, seed, prompt=prompt, guidance=guidance)
        except UnreadableImage as exc:
            return _error(415, str(exc))
        return JSONResponse({"images": [base64.b64encode(png(x)).decode() for x in images], "n": n, "seed": seed,
                             "t": t, "prompt": prompt, "cfg": guidance,
                             "latency_ms": round((time.perf_counter() - start) * 1000, 2)})


def gpus(sc: ServeConfig) -> float:
    """``serve.num_gpus``, -1 resolved: one when the cluster has a GPU."""
    import ray

    if sc.num_gpus >= 0:
        return sc.num_gpus
    return 1.0 if ray.cluster_resources().get("GPU", 0) >= 1 else 0.0


def cpus(sc: ServeConfig) -> float:
    """``serve.num_cpus``, lowered to the cluster's CPUs when it has fewer: such a replica would never start."""
    import ray

    have = ray.cluster_resources().get("CPU", 0.0)
    if 0 < have < sc.num_cpus:
        log.warning("serve.num_cpus=%s is more than this Ray cluster's %s CPUs: each replica takes %s",
                    sc.num_cpus, have, have)
        return have
    return sc.num_cpus


def application(run: str | Path, cfg: Config) -> serve.Application:
    """The bound application of ``run``, sized by ``cfg.serve``; Ray must be initialised."""
    sc = cfg.serve
    deployment = FaceServer.options(num_replicas=sc.replicas,
                                    ray_actor_options={"num_cpus": cpus(sc), "num_gpus": gpus(sc)})
    return deployment.bind(str(run), to_dict(cfg)["serve"])


def build(args: dict) -> serve.Application:
    """The application builder a Serve config file names (``import_path: raydino.serve.app:build``).

    ``args``: ``run`` (a finished run folder on the cluster's storage) and
    optional ``overrides`` (``serve.key=value`` strings), as on the command line.
    """
    run = args["run"]
    return application(run, load_config(config_file=str(Run(run).config), overrides=list(args.get("overrides", []))))
