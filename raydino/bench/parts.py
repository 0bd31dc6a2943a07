"""Can blur or speckle game the parts figures? A measurement on synthetic faces, no run needed.

Trains the part segmenter as ``raydino tiny-models`` does (on the faces of
seed 0, at the read size, one thread), writes held-out faces of another seed
into a folder and reads them as ``raydino eval`` does (``read_image`` at the
pyramid's largest size, then the generator's resolution), and scores the
real faces, the same faces with eyes, mouth and glasses left out, and real
faces blurred or with per-pixel noise: the figures must put blur and
speckle near the parts-removed faces, not near the real ones.

    python -m raydino.bench.parts [--faces 192] [--heldout 256] [--size 128] [--read 112] [--resolution 32]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torchvision.transforms.functional import gaussian_blur

from raydino.config import TinyModelsConfig
from raydino.data.face_set import from_seed, read_attributes
from raydino.data.images import read_image
from raydino.data.synth_faces import PARTS, write_faces
from raydino.evaluation.metrics import match_resolution
from raydino.evaluation.part_figures import HeldOut, error_ratios, held_out, ious, two_eyes_and_a_mouth
from raydino.models.encoder_training import MAX_SPECKLE
from raydino.models.encoders import resize
from raydino.models.part_segmenter import PartSegmenter, train_segmenter
from raydino.models.tiny import fixed_threads

HELD_OUT_SEED = 10_000  # not the segmenter's training faces (seed 0)


def blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    return gaussian_blur(images, 2 * int(np.ceil(3 * sigma)) + 1, sigma)


def degraded(real: torch.Tensor, removed: torch.Tensor, seed: int = 0) -> dict[str, torch.Tensor]:
    """The images each figure is measured on: real, parts removed, and real faces blurred or speckled."""
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn(real.shape, generator=gen)
    side = real.shape[-1]
    return {"real": real, "parts removed": removed,
            **{f"blur sigma {s} px": blur(real, s) for s in (0.5, 1.0, 2.0)},
            **{f"{s} px, up-sampled": resize(resize(real, s), side) for s in (side // 2, side // 4)},
            f"speckle (real + noise sigma {MAX_SPECKLE})": (real + MAX_SPECKLE * noise).clamp(0, 1),
            "real + noise sigma 0.3": (real + 0.3 * noise).clamp(0, 1),
            "uniform noise": torch.rand(real.shape, generator=gen),
            f"parts removed + noise sigma {MAX_SPECKLE}": (removed + MAX_SPECKLE * noise).clamp(0, 1)}


def measure(images: torch.Tensor, real: torch.Tensor, truth: HeldOut, segmenter: PartSegmenter) -> dict[str, float]:
    """Error ratios (pooled and per part), IoU per part and the two-eyes-and-a-mouth share of ``images``."""
    pred = segmenter.predict(images)
    ratio, iou = error_ratios(images, real, truth), ious(pred, truth.parts)
    return {"ratio": ratio[""], **{f"ratio/{k}": v for k, v in ratio.items() if k},
            **{f"iou/{k}": v for k, v in iou.items() if k}, "found": float(two_eyes_and_a_mouth(pred).float().mean())}


def heldout_set(folder: Path, count: int, size: int, read: int, resolution: int) -> tuple[torch.Tensor, HeldOut]:
    """Held-out faces written as PNGs and read back like ``raydino eval`` reads them, with their reference."""
    write_faces(folder, count, seed=HELD_OUT_SEED, size=size)
    faces = read_attributes(folder)
    names = sorted(faces)
    real = match_resolution(np.stack([read_image(folder / n, read) for n in names]), resolution)
    return real, held_out([faces[n] for n in names], [size] * count, read, resolution)


def run_bench(faces: int, heldout: int, size: int, read: int, resolution: int, steps: int) -> None:
    with fixed_threads():
        t0, c0 = time.time(), time.process_time()
        segmenter = train_segmenter(from_seed(0, faces, read), steps)
        print(f"segmenter: {steps} steps on {faces} faces at {read} px in {time.time() - t0:.1f} s "
              f"({time.process_time() - c0:.1f} s of CPU, one thread)")
        with tempfile.TemporaryDirectory() as tmp:
            real, truth = heldout_set(Path(tmp), heldout, size, read, resolution)
        rows = {name: measure(images, real, truth, segmenter) for name, images in degraded(real, truth.removed).items()}
    keys = list(rows["real"])
    glasses = int((truth.shares[:, PARTS.index("glasses")].sum((1, 2)) > 0).sum())
    print(f"{heldout} held-out faces ({glasses} with glasses), "
          f"{size} px files read at {read} px, figures at {resolution} px")
    print("| images | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, row in rows.items():
        print(f"| {name} | " + " | ".join(f"{row.get(k, float('nan')):.3f}" for k in keys) + " |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--faces", type=int, default=192, help="segmenter training faces (the demo's synth_count)")
    p.add_argument("--heldout", type=int, default=256)
    p.add_argument("--size", type=int, default=128, help="side of the held-out files (the demo's synth_size)")
    p.add_argument("--read", type=int, default=112, help="side eval reads them at (the pyramid's largest level)")
    p.add_argument("--resolution", type=int, default=32, help="the generator's resolution")
    p.add_argument("--steps", type=int, default=TinyModelsConfig.segmenter_steps)
    a = p.parse_args()
    run_bench(a.faces, a.heldout, a.size, a.read, a.resolution, a.steps)


if __name__ == "__main__":
    main()
