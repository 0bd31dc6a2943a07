"""``raydino bench loss``: the distributional loss against the regression loss, side by side.

It reads a finished ``raydino run`` output (``make run``), whose run
(``runs/train``, the preset's ``loss.kind``) and comparison run
(``runs/compare-<kind>``, ``eval.compare_loss``) were trained with the same
schedule, seed and data and evaluated on the same held-out images. It adds
what the run does not measure, the seconds per training step of each loss
(``train_step`` on in-memory batches of the run's per-worker size, same
process, same machine), and writes one picture of both runs' noise grids.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from raydino.bench.record import header, save
from raydino.bench.train import device_phase
from raydino.grids import stack
from raydino.layout import Output, Run, Samples

FIGURES = ("noise_spread", "sharpness_ratio", "fd_dinov2/reconstructions", "fd_dinov2/floor", "fd_dinov2/n",
           "train_encoder/dist_unweighted")


def _runs(output: Output) -> dict[str, Run]:
    """``{loss kind: run}`` of the run and its comparison run (trained with ``loss.kind`` set to its kind)."""
    runs = {run.config_of().loss.kind: run for run in output.runs()}
    for kind, run in runs.items():
        if not run.eval.is_file():
            raise FileNotFoundError(f"{run.eval}: the {kind} run has no figures; finish `raydino run` first")
    if len(runs) < 2:
        raise FileNotFoundError(f"{output.run.path.parent} has no compare-<kind> run: run with eval.compare_loss set")
    return runs


def side_by_side(grids: dict[str, Path], out: Path) -> Path:
    """The noise grids one above the other, each under a title naming its loss."""
    tiles = []
    for kind, path in grids.items():
        grid = np.asarray(Image.open(path).convert("RGB"))
        strip = Image.new("RGB", (grid.shape[1], 22), "white")
        ImageDraw.Draw(strip).text((4, 5), f"loss.kind={kind}: each row a held-out image, then 8 noise draws",
                                   fill="black")
        tiles.append(np.concatenate([np.asarray(strip), grid]))
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(stack(tiles)).save(out)
    return out


def run_bench(root: str | Path, steps: int = 10, grid: str | Path | None = None, out: str | None = None) -> dict[str, Any]:
    """Both runs' detail figures and seconds per step side by side, as ratios to the regression run's."""
    output = Output(root)
    runs = _runs(output)
    results: dict[str, Any] = {**header("loss"), "root": str(output.root.resolve()), "runs": {}}
    for kind, run in runs.items():
        cfg = run.config_of()
        stage = cfg.train.stages[-1]
        per_worker = stage.batch_size // cfg.train.num_workers
        timing = device_phase(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, stages=[stage])),
                              cfg.pyramids.dino, [per_worker], steps, torch.device("cpu"))[0]
        figures = run.figures("eval")
        results["runs"][kind] = {"run": str(run.path), "draws": cfg.loss.draws if kind == "energy" else 1,
                                 "s_per_step": timing["ms_per_step"] / 1e3, "step_resolution": stage.resolution,
                                 "step_batch": per_worker, **{k: figures.get(k) for k in FIGURES}}
    (base, b), (new, n) = sorted(results["runs"].items(), key=lambda kv: kv[0] != "regression")
    print(f"{'':34}{base:>14}{new:>14}{'ratio':>10}")
    for key in (*FIGURES, "s_per_step"):
        if isinstance(b.get(key), (int, float)) and isinstance(n.get(key), (int, float)):
            ratio = f"{n[key] / b[key]:.2f}x" if b[key] else "-"
            print(f"{key:34}{b[key]:>14.4g}{n[key]:>14.4g}{ratio:>10}")
    if grid:
        grids = {kind: output.samples / (Samples.NOISE if run.path == output.run.path else Samples.NOISE_COMPARE)
                 for kind, run in runs.items()}
        results["grid"] = str(side_by_side(dict(sorted(grids.items(), key=lambda kv: kv[0] != "regression")),
                                           Path(grid)))
        print(f"grid: {results['grid']}")
    save(results, out)
    return results
