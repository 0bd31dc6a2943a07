"""One optimisation step and the small pieces around it, in plain PyTorch.

Nothing here knows about Ray: the same step runs under Ray Train's DDP, in
the tests and in the benchmark. Under DDP the gradients are already averaged
when ``clip_grad_norm_`` reads them, so every rank sees the same norm and
takes the same skip/step decision.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from raydino.config import StageConfig
from raydino.losses import DinoPyramidLoss, LossTerms
from raydino.models.generator import Noise
from raydino.pyramids.batch import Targets


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


def all_finite(*values: torch.Tensor) -> bool:
    """True when every value is finite on every rank (one tiny all-reduce under DDP)."""
    ok = torch.stack([torch.isfinite(v.detach().float()).all() for v in values]).all().float()
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


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
    opt.zero_grad(set_to_none=True)
    terms.total.backward()
    grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
    ok = all_finite(terms.total, grad_norm)
    if ok:
        opt.step()
    return StepOutput(terms=terms, grad_norm=float(grad_norm), ok=ok)
