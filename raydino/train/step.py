"""One optimisation step and the small pieces around it, in plain PyTorch.

Nothing here knows about Ray: the same step runs under Ray Train's DDP, in
the tests and in the benchmark. Under DDP the gradients are already averaged
when ``clip_grad_norm_`` reads them, so every rank sees the same norm and
takes the same skip/step decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from raydino.config import StageConfig
from raydino.losses import DinoPyramidLoss, LossTerms
from raydino.models.generator import Noise
from raydino.pyramids.batch import Targets
from raydino.train.runtime import optimizer_step


def requires_grad(model: nn.Module, flag: bool) -> None:
    for p in model.parameters():
        p.requires_grad_(flag)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """``ema <- beta * ema + (1 - beta) * model``: the weights evaluation and sampling use."""
    for e, p in zip(ema.parameters(), model.parameters(), strict=True):
        e.lerp_(p.detach(), 1 - beta)


def fade_alpha(stage: StageConfig, stage_step: int, first: bool) -> float:
    """ProGAN fade-in: the new block's share grows linearly over ``fade_images`` images."""
    if first or stage.fade_images <= 0:
        return 1.0
    return min(1.0, stage_step * stage.batch_size / stage.fade_images)


@dataclass
class StepOutput:
    terms: LossTerms
    grad_norm: float
    ok: bool  # False: non-finite loss or gradient, the update was skipped


def train_step(net: nn.Module, opt: torch.optim.Optimizer, loss_fn: DinoPyramidLoss, targets: Targets,
               noise: Noise, resolution: int, alpha: float, *, grad_clip: float, bf16: bool,
               rng: torch.Generator | None = None) -> StepOutput:
    """Generate ``loss_fn.draws`` images per target (one pass), score, backprop through the frozen DINOv2, step.

    ``noise`` holds one draw per generated image. A non-finite loss or
    gradient skips the update (the caller counts it); bf16 autocast applies
    on GPU only, where it pays.
    """
    device = targets.code.device
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16 and device.type == "cuda"):
        images = net(targets.code.repeat_interleave(loss_fn.draws, dim=0), noise, resolution, alpha)
        terms = loss_fn(images, targets, resolution, rng)
    ok, grad_norm = optimizer_step(terms.total, net.parameters(), opt, grad_clip)
    return StepOutput(terms=terms, grad_norm=float(grad_norm), ok=ok)
