"""The main job (``raydino run``): every stage of the pipeline, each resumable.

Each step declares the output that proves it finished; a rerun skips finished
steps, so a crash costs only the step it happened in.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from raydino.config import Config, save_config


@dataclass
class Step:
    name: str
    marker: Path
    action: Callable[[], object]


def _faces(cfg: Config, out: Path) -> Path:
    from raydino.data.synth_faces import write_faces

    return write_faces(out, cfg.data.synth_count, seed=cfg.data.seed, size=cfg.data.synth_size)


def _models(cfg: Config, faces: Path, out: Path) -> None:
    from raydino.models.tiny import write_tiny_models

    write_tiny_models(out, seed=cfg.data.seed, train_clip_on=faces)


def plan(cfg: Config) -> list[Step]:
    """The steps of a run, in order; later issues append theirs."""
    root = Path(cfg.out)
    faces = root / "faces" if not cfg.data.images else Path(cfg.data.images)
    steps = []
    if not cfg.data.images:
        steps.append(Step("synthetic faces", faces / "metadata.parquet", lambda: _faces(cfg, faces)))
    if cfg.preset == "demo":
        models = root / "models"
        steps.append(Step("tiny models", models / "clip-tiny" / "open_clip_model.safetensors",
                          lambda: _models(cfg, faces, models)))
    return steps


def run(cfg: Config, address: str | None = None) -> None:
    """Run every unfinished step and say where the outputs are."""
    root = Path(cfg.out)
    save_config(cfg, root / "config.yaml")
    start = time.time()
    steps = plan(cfg)
    for i, step in enumerate(steps, 1):
        if step.marker.exists():
            print(f"[{i}/{len(steps)}] {step.name}: done already ({step.marker.parent})", flush=True)
            continue
        t0 = time.time()
        print(f"[{i}/{len(steps)}] {step.name} ...", flush=True)
        step.action()
        print(f"[{i}/{len(steps)}] {step.name}: {time.time() - t0:.1f}s -> {step.marker.parent}", flush=True)
    print(f"raydino run finished in {time.time() - start:.1f}s; outputs under {root.resolve()}")
