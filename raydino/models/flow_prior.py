"""A flow-matching prior over the coarse code, conditioned on a CLIP vector.

The coarse code is a handful of DINOv2 tokens (``[g*g, D]``: 16 of them at
4x4), so a small transformer can model their joint distribution, where a
Gaussian cannot: the codes of distinct faces form clusters, and a Gaussian
with their mean and covariance puts its mass between them.

Rectified flow (Liu et al. 2022; Lipman et al. 2022): ``x_t = (1 - t) x + t e``
with ``e ~ N(0, I)``, so ``t = 0`` is a (standardised) code and ``t = 1`` is
noise; the network predicts the velocity ``e - x`` and sampling integrates
it from ``t = 1`` to ``0`` in K Euler or Heun steps. Time enters through
adaLN (DiT's adaLN-Zero: every block starts as the identity).

The condition is a unit CLIP vector: the image embedding in training,
perturbed as in LAFITE (Zhou et al. 2022) so that a text embedding, which
lies near but not on the image embeddings, stands in for it at sampling
time; a ``cond_dropout`` share of training codes see a learned null
condition instead, which gives the unconditional model of classifier-free
guidance: ``v = v_null + s (v_cond - v_null)``.

A *student* (:mod:`raydino.models.student`) is the same network with the
guidance scale as one more input, distilled from the teacher's guided ODE
so that a step is one evaluation (docs/prior.md); ``velocity`` and
``integrate`` treat both alike.
"""

from __future__ import annotations

import dataclasses
import json
import math

import torch
import torch.nn.functional as F
from torch import nn

from raydino.config import PriorConfig
from raydino.config.checks import check_prior

STUDENT_MIN_T = 1e-3  # a student is never asked for t = 0 (the last step ends there), but a division must not be
GUIDANCE_UNIT = 10.0  # a student's guidance scale enters as a time would: 0-10 as 0-1


def perturb(emb: torch.Tensor, noise: float, rng: torch.Generator | None = None) -> torch.Tensor:
    """LAFITE's fixed perturbation: ``normalize(h + xi * ||h|| * e / ||e||)``."""
    eps = torch.randn(emb.shape, generator=rng).to(emb.device, emb.dtype)
    eps = eps / eps.norm(dim=-1, keepdim=True) * emb.norm(dim=-1, keepdim=True)
    return F.normalize(emb + noise * eps, dim=-1)


def shift_time(t: torch.Tensor | float, shift: float) -> torch.Tensor | float:
    """RAE's schedule shift (Zheng et al. 2025, after SD3): ``s t / (1 + (s - 1) t)``; ``s > 1`` spends more time near noise."""
    return shift * t / (1 + (shift - 1) * t)


def time_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal features of ``t`` in [0, 1] (scaled to 0-1000, as diffusion models' timesteps are)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10_000) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000 * t.float()[:, None] * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=-1)


class Block(nn.Module):
    """Pre-norm self-attention and MLP, each shifted, scaled and gated by the condition (adaLN-Zero)."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False)
        hidden = int(width * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))
        self.ada = nn.Linear(width, 6 * width)
        nn.init.zeros_(self.ada.weight)
        nn.init.zeros_(self.ada.bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift1, scale1, gate1, shift2, scale2, gate2 = self.ada(F.silu(c))[:, None].chunk(6, dim=-1)
        b, t, w = x.shape
        h = self.norm1(x) * (1 + scale1) + shift1
        q, k, v = self.qkv(h).view(b, t, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        attn = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, w)
        x = x + gate1 * self.proj(attn)
        return x + gate2 * self.mlp(self.norm2(x) * (1 + scale2) + shift2)


class FlowPrior(nn.Module):
    """Velocity field over standardised coarse codes ``[B, tokens, dim]``, and its samplers.

    ``clip_dim == 0`` is an unconditional prior (a pyramid without a CLIP
    column). The per-channel code statistics are buffers, so the saved
    weights alone turn samples back into DINOv2 token units.
    """

    def __init__(self, cfg: PriorConfig, tokens: int, dim: int, clip_dim: int, cond_stats: bool = True,
                 student: bool = False):
        super().__init__()
        self.grid, p = math.isqrt(tokens), cfg.patch
        if self.grid ** 2 != tokens:
            raise ValueError(f"the code's {tokens} tokens are not a square grid")
        check_prior(cfg, self.grid)
        self.cfg, self.tokens, self.dim, self.clip_dim = cfg, tokens, dim, clip_dim
        w = cfg.width
        self.x_in = nn.Linear(dim * p * p, w)
        self.pos = nn.Parameter(torch.randn(1, tokens // (p * p), w) * 0.02)
        self.t_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w))
        self.c_in = nn.Linear(clip_dim, w) if clip_dim else None
        self.null = nn.Parameter(torch.zeros(w))  # the dropped condition
        self.blocks = nn.ModuleList([Block(w, cfg.heads, cfg.mlp_ratio) for _ in range(cfg.depth)])
        self.norm = nn.LayerNorm(w, elementwise_affine=False)
        self.ada = nn.Linear(w, 2 * w)
        self.out = nn.Linear(w, dim * p * p)
        for layer in (self.ada, self.out):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)
        # a student's guidance scale enters beside the time; its last layer starts at zero, adding nothing
        self.student = student
        self.g_mlp = nn.Sequential(nn.Linear(w, w), nn.SiLU(), nn.Linear(w, w)) if student else None
        if student:
            nn.init.zeros_(self.g_mlp[2].weight)
            nn.init.zeros_(self.g_mlp[2].bias)
        self.register_buffer("code_mean", torch.zeros(dim))
        self.register_buffer("code_std", torch.ones(dim))
        # the conditions are standardised (train/conditions.py: condition_stats); False: a prior saved before that
        self.cond_stats = bool(clip_dim and cond_stats)
        if self.cond_stats:
            self.register_buffer("cond_mean", torch.zeros(clip_dim))
            self.register_buffer("cond_std", torch.ones(clip_dim))

    # --- units ------------------------------------------------------------------------------

    def set_code_stats(self, codes: torch.Tensor) -> None:
        """Per-channel mean and std of a sample of codes: DINO tokens have a few very large channels."""
        flat = codes.reshape(-1, self.dim).float()
        self.code_mean.copy_(flat.mean(0))
        self.code_std.copy_(flat.std(0).clamp_min(1e-4))

    def standardise(self, codes: torch.Tensor) -> torch.Tensor:
        return (codes.float() - self.code_mean) / self.code_std

    def to_codes(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.code_std + self.code_mean

    # --- the velocity field -----------------------------------------------------------------

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, g*g, D]`` -> ``[B, (g/p)^2, p*p*D]``: each p x p group of neighbouring tokens becomes one (DiT's patches)."""
        b, g, p = len(x), self.grid, self.cfg.patch
        x = x.view(b, g // p, p, g // p, p, self.dim).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, (g // p) ** 2, p * p * self.dim)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        b, g, p = len(x), self.grid, self.cfg.patch
        x = x.view(b, g // p, g // p, p, p, self.dim).permute(0, 1, 3, 2, 4, 5)
        return x.reshape(b, g * g, self.dim)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None, keep: torch.Tensor,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        """Velocity at ``x_t`` (standardised); ``keep[i]``: sample ``i`` sees its condition, else the null one.

        ``guidance`` ``[B]``: a student's guidance scales (0 where ``keep`` is False); a teacher takes none.
        """
        c = self.t_mlp(time_embedding(t, self.cfg.width))
        if self.g_mlp is not None:
            c = c + self.g_mlp(time_embedding(guidance / GUIDANCE_UNIT, self.cfg.width))
        null = self.null.expand(len(x), -1)
        if self.c_in is not None and cond is not None:
            if self.cond_stats:
                cond = (cond - self.cond_mean) / self.cond_std
            c = c + torch.where(keep[:, None], self.c_in(cond), null)
        else:
            c = c + null
        h = self.x_in(self.patchify(x)) + self.pos
        for block in self.blocks:
            h = block(h, c)
        shift, scale = self.ada(F.silu(c))[:, None].chunk(2, dim=-1)
        out = self.unpatchify(self.out(self.norm(h) * (1 + scale) + shift))
        if self.student:  # it predicts the code itself; its velocity is the straight line from x_t to it
            return (x - out) / t.clamp_min(STUDENT_MIN_T)[:, None, None]
        return out

    def velocity(self, x: torch.Tensor, t: float, cond: torch.Tensor | None,
                 guidance: float | torch.Tensor) -> torch.Tensor:
        """The guided velocity; ``guidance``: one scale, or one per sample ``[B]``.

        A teacher runs its conditional and null evaluations in one batch when
        there is a condition; a student, one evaluation.
        """
        b, device = len(x), x.device
        tt = torch.full((b,), t, device=device)
        g = torch.as_tensor(guidance, dtype=torch.float32, device=device).expand(b)
        if cond is None:
            return self(x, tt, None, torch.zeros(b, dtype=torch.bool, device=device), torch.zeros_like(g))
        if self.student:
            return self(x, tt, cond, torch.ones(b, dtype=torch.bool, device=device), g)
        keep = torch.cat([torch.ones(b, dtype=torch.bool), torch.zeros(b, dtype=torch.bool)]).to(device)
        v_cond, v_null = self(torch.cat([x, x]), tt.repeat(2), cond.repeat(2, 1), keep).chunk(2)
        return v_null + g[:, None, None] * (v_cond - v_null)

    def evaluations(self, steps: int | None = None, conditioned: bool = True) -> int:
        """Network evaluations per sample for ``steps`` (default: the prior's own K): what a sample costs.

        Heun takes two velocities per step but one on the last; a teacher's
        guided velocity is two evaluations (conditional and null), a
        student's one.
        """
        steps = self.cfg.sample_steps if steps is None else steps
        calls = 2 * steps - 1 if self.cfg.solver == "heun" else steps
        return calls * (2 if conditioned and self.clip_dim and not self.student else 1)

    def describe(self, steps: int | None = None, conditioned: bool = True) -> str:
        """Which prior and what a sample costs, as sampling, serving and evaluation say it."""
        steps = self.cfg.sample_steps if steps is None else steps
        kind = "student" if self.student else "teacher"
        return f"{kind}, K={steps} {self.cfg.solver}, {self.evaluations(steps, conditioned)} evaluations"

    @torch.no_grad()
    def integrate(self, x: torch.Tensor, t_from: float, cond: torch.Tensor | None = None, *, steps: int | None = None,
                  guidance: float | None = None, solver: str | None = None) -> torch.Tensor:
        """Follow the flow from ``t_from`` down to 0 in ``steps`` equal steps (Euler or Heun)."""
        steps = self.cfg.sample_steps if steps is None else steps
        guidance = self.cfg.guidance if guidance is None else guidance
        solver = solver or self.cfg.solver
        if steps < 1:
            raise ValueError(f"--steps: K must be at least 1, got {steps}")
        shift = self.cfg.time_shift  # the grid is even in unshifted time, which starts where t_from is
        start = t_from / (shift - (shift - 1) * t_from)
        times = [float(shift_time(u, shift)) for u in torch.linspace(start, 0.0, steps + 1)]
        for i, (t, s) in enumerate(zip(times[:-1], times[1:], strict=True)):
            v = self.velocity(x, t, cond, guidance)
            x_next = x + (s - t) * v
            if solver == "heun" and i < steps - 1:  # the last step ends at t = 0, where Heun gains nothing
                x_next = x + (s - t) * (v + self.velocity(x_next, s, cond, guidance)) / 2
            x = x_next
        return x

    @torch.no_grad()
    def sample(self, n: int, rng: torch.Generator | None = None, cond: torch.Tensor | None = None,
               **kwargs) -> torch.Tensor:
        """``n`` codes in DINOv2 token units; ``cond`` ``[n, clip_dim]`` unit vectors, or None (unconditional)."""
        device = self.code_mean.device
        noise = torch.randn(n, self.tokens, self.dim, generator=rng).to(device)
        return self.to_codes(self.integrate(noise, 1.0, cond, **kwargs))

    @torch.no_grad()
    def vary(self, codes: torch.Tensor, t: float, rng: torch.Generator | None = None,
             cond: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        """Noise ``codes`` to flow time ``t`` and integrate back: 0 returns them, 1 forgets them."""
        if not 0.0 <= t <= 1.0:
            raise ValueError(f"--vary: T must be in [0, 1], got {t}")
        if t == 0:  # the code itself, bit for bit (standardising and back would round)
            return codes.clone()
        x = self.standardise(codes)
        noise = torch.randn(x.shape, generator=rng).to(x.device)
        return self.to_codes(self.integrate((1 - t) * x + t * noise, t, cond, **kwargs))


def flow_matching_loss(net: nn.Module, x: torch.Tensor, cond: torch.Tensor | None, rng: torch.Generator,
                       clip_noise: float, cond_dropout: float, time_shift: float = 1.0) -> torch.Tensor:
    """Rectified-flow loss of one batch of standardised codes ``x``; ``net`` may be DDP-wrapped.

    Every random draw (time, noise, perturbation, dropout) comes from
    ``rng``, which the checkpoint carries: a resumed run draws the same.
    """
    b, device = len(x), x.device
    t = shift_time(torch.rand(b, generator=rng), time_shift).to(device)
    noise = torch.randn(x.shape, generator=rng).to(device)
    keep = (torch.rand(b, generator=rng) >= cond_dropout).to(device)
    if cond is not None:
        cond = perturb(F.normalize(cond.float(), dim=-1), clip_noise, rng)
    x_t = (1 - t)[:, None, None] * x + t[:, None, None] * noise
    return F.mse_loss(net(x_t, t, cond, keep), noise - x)


def metadata(model: FlowPrior) -> dict[str, str]:
    """What the saved weights need to be rebuilt: the prior's config and the code's shape."""
    return {"prior": json.dumps(dataclasses.asdict(model.cfg)), "tokens": str(model.tokens), "dim": str(model.dim),
            "clip_dim": str(model.clip_dim), "cond_stats": str(int(model.cond_stats)),
            "student": str(int(model.student))}


def prior_from_header(meta: dict[str, str]) -> FlowPrior:
    """An untrained prior of the config and shape a saved one's safetensors header names."""
    cfg = {"condition": "image"} | json.loads(meta["prior"])  # a prior saved before text conditioning: image-conditioned
    return FlowPrior(PriorConfig(**cfg), int(meta["tokens"]), int(meta["dim"]), int(meta["clip_dim"]),
                     cond_stats=meta.get("cond_stats") == "1", student=meta.get("student") == "1")
