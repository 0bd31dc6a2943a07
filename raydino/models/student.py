"""The flow prior's one-step student: made from its teacher, trained on the teacher's own samples.

Rectified-flow distillation (InstaFlow, Liu et al. 2024) with guidance
distilled in (the guidance-conditioned student of Meng et al. 2023): the
teacher's guided ODE carries noise to codes (:func:`teacher_codes`), and
the student (:func:`student_of`, a :class:`~raydino.models.flow_prior.FlowPrior`
with ``student=True``) learns each straight path (:func:`distillation_loss`).
docs/prior.md says why this method and what it measured.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from raydino.models.flow_prior import STUDENT_MIN_T, FlowPrior


def distillation_loss(net: nn.Module, noise: torch.Tensor, code: torch.Tensor, cond: torch.Tensor | None,
                      guidance: torch.Tensor, rng: torch.Generator, one_step_share: float) -> torch.Tensor:
    """The student's loss on teacher pairs: the straight path from ``noise`` to the teacher's ``code``.

    Rectified-flow distillation (InstaFlow, Liu et al. 2024): on the line
    ``x_t = (1 - t) code + t noise`` the velocity is ``noise - code`` at
    every ``t``, so one Euler step from ``t = 1`` lands on the code. The
    student predicts the code (its velocity is the line to it: no identity
    of the 3,072-number noise to copy through the network, as a velocity
    would need at ``t = 1``), and the loss is on that code. A
    ``one_step_share`` of the batch is taken at ``t = 1``, where the
    noise alone decides the code (no two pairs' lines meet there); the rest
    at uniform times, which the few-step and edit paths pass through.
    ``guidance`` ``[B]``: each pair's scale, 0 for the unconditional ones,
    which see the null condition.
    """
    b, device = len(code), code.device
    t = torch.where(torch.rand(b, generator=rng) < one_step_share, torch.ones(b), torch.rand(b, generator=rng))
    t = t.clamp_min(STUDENT_MIN_T).to(device)
    x_t = (1 - t)[:, None, None] * code + t[:, None, None] * noise
    keep = guidance > 0
    predicted = x_t - t[:, None, None] * net(x_t, t, cond, keep, guidance)  # the student's code, back from its velocity
    return F.mse_loss(predicted, code)


@torch.no_grad()
def teacher_codes(teacher: FlowPrior, noise: torch.Tensor, cond: torch.Tensor | None, guidance: torch.Tensor,
                  steps: int) -> torch.Tensor:
    """Where the teacher's guided flow takes each noise draw (standardised); guidance 0 is the null model's own flow."""
    return teacher.integrate(noise, 1.0, cond, steps=steps, guidance=guidance, solver="heun")


def student_of(teacher: FlowPrior, sample_steps: int) -> FlowPrior:
    """A student with the teacher's weights and statistics, sampling in ``sample_steps`` Euler steps on an even grid."""
    cfg = dataclasses.replace(teacher.cfg, sample_steps=sample_steps, solver="euler", time_shift=1.0)
    student = FlowPrior(cfg, teacher.tokens, teacher.dim, teacher.clip_dim, cond_stats=teacher.cond_stats,
                        student=True).to(teacher.code_mean.device)
    missing, unexpected = student.load_state_dict(copy.deepcopy(teacher.state_dict()), strict=False)
    if unexpected or not all(k.startswith("g_mlp.") for k in missing):  # only the guidance input is new
        raise ValueError(f"the student does not fit its teacher: missing {missing}, unexpected {unexpected}")
    for layer in (student.ada, student.out):  # its output is a code now, not a velocity: it starts at the mean code
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)
    return student
