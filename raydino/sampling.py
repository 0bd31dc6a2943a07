"""Sampling (``raydino sample``): coarse code -> image in one generator pass.

Codes come from a real image (its coarsest DINOv2 level, or that code moved
along the prior's flow to time T and back, under a prompt for an edit), from the flow prior
(unconditional, or conditioned on a prompt's CLIP text embedding with
classifier-free guidance), from the PCA Gaussian baseline, or from mixing
two codes. The flow prior is the run's distilled student where it has one
(one evaluation per code, guidance included), else the prior itself, the
*teacher* (K guided Heun steps); ``teacher=True`` picks the teacher. Loads
the run's EMA generator and prior without Ray; batches on the GPU when
there is one.
"""

from __future__ import annotations

import copy
import dataclasses
from functools import cached_property
from pathlib import Path

import torch

from raydino.data.images import BadImage, UnreadableImage, decode_image, read_image
from raydino.grids import Row, save_each, save_grid
from raydino.layout import Run
from raydino.models.encoders import dino_levels, resize, to_float
from raydino.models.flow_prior import FlowPrior
from raydino.models.generator import Noise
from raydino.models.loading import Clip, Dino, load_clip, load_dino
from raydino.models.pca_prior import PCAGaussianPrior
from raydino.models.saved import load_generator, load_pca, load_prior

REGIONS = ("top", "bottom", "left", "right")
PRIORS = ("flow", "pca")
TRAIN_PRIOR_HINT = "train one with `raydino train-prior --run RUN --pyramids PYRAMIDS`"


class Sampler:
    """A trained run, ready to turn codes into images."""

    def __init__(self, run_dir: str | Path, device: str | None = None, teacher: bool = False):
        self.run, self.teacher = Run(run_dir), teacher
        if not self.run.generator.is_file():
            raise FileNotFoundError(f"{self.run.path}: not a finished run ({self.run.generator.name} missing; "
                                    "train it first)")
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.cfg = load_generator(self.run.path, self.device)
        self.resolution = self.cfg.train.stages[-1].resolution

    @cached_property
    def dino(self) -> Dino:
        return load_dino(self.cfg.pyramids.dino, self.device)

    @cached_property
    def clip(self) -> Clip:
        if not self.cfg.pyramids.clip:
            raise ValueError(f"{self.run.path}: the run's config names no CLIP model (pyramids.clip)")
        return load_clip(self.cfg.pyramids.clip, self.device)

    def noise(self, n: int, seed: int) -> Noise:
        """``n`` draws (style vector and per-pixel maps) at the run's resolution, a function of ``seed`` only."""
        return self.model.draw_noise(n, self.resolution, torch.Generator().manual_seed(seed), self.device)

    @torch.no_grad()
    def generate(self, codes: torch.Tensor, noise: Noise) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            out = self.model(codes.to(self.device), noise, self.resolution)
        return out.float().clamp(0, 1).cpu()

    def load_image(self, source: str | Path | bytes) -> torch.Tensor:
        """[1, 3, S, S] float image at the pyramid's largest size, preprocessed like the pyramid.

        ``source``: a file or URI, or an image's bytes (an upload to ``raydino serve``).
        """
        size, pc = max(self.cfg.pyramids.sizes), self.cfg.pyramids
        if not isinstance(source, bytes):
            return to_float(read_image(source, size, max_pixels=pc.max_pixels)[None])
        try:
            return to_float(decode_image(source, size, min_side=1, max_pixels=pc.max_pixels)[None])
        except BadImage as exc:
            raise UnreadableImage("(the upload)", exc.kind, exc) from None

    @torch.no_grad()
    def code_from_image(self, image: torch.Tensor) -> torch.Tensor:
        (_, tokens), = dino_levels(self.dino, image.to(self.device), self.cfg.pyramids.sizes[:1])
        return tokens.float()

    @cached_property
    def _flow(self) -> FlowPrior | None:
        return load_prior(self.run, self.device, teacher=self.teacher)

    def variant(self, teacher: bool, steps: int | None = None) -> Sampler:
        """This sampler (its models shared, nothing loaded again) with the teacher or the student, at ``steps`` K."""
        other = copy.copy(self)
        other.teacher = teacher
        other.__dict__.pop("_flow", None)
        if steps is not None and other._flow is not None:
            flow = copy.copy(other._flow)  # the same weights, another default K
            flow.cfg = dataclasses.replace(flow.cfg, sample_steps=steps)
            other._flow = flow
        return other

    def describe_prior(self, steps: int | None = None, conditioned: bool = True) -> str:
        """Which flow prior samples and what a code costs ("student, K=1 euler, 1 evaluations")."""
        return self.flow("--prior").describe(steps, conditioned)

    def flow(self, flag: str) -> FlowPrior:
        """The run's flow prior; ``flag`` is the option that needs it, named when there is none."""
        if self._flow is None:
            raise FileNotFoundError(f"{flag}: {self.run.path} has no prior ({self.run.prior.name} missing): {TRAIN_PRIOR_HINT}")
        return self._flow

    def pca(self) -> PCAGaussianPrior:
        pca = load_pca(self.run)
        if pca is None:
            raise FileNotFoundError(f"--prior pca: {self.run.path} has no PCA baseline ({self.run.prior_pca.name} "
                                    f"missing): {TRAIN_PRIOR_HINT}")
        return pca

    @torch.no_grad()
    def text_condition(self, prompts: list[str]) -> torch.Tensor:
        """Unit CLIP text embeddings, checked against the CLIP the prior was conditioned on."""
        prior = self.flow("--prompt")
        if not prior.clip_dim:
            raise ValueError(f"--prompt: the prior of {self.run.path} is unconditional (its pyramid has no CLIP column)")
        emb = self.clip.encode_text(prompts)
        if emb.shape[1] != prior.clip_dim:
            raise ValueError(f"--prompt: {self.cfg.pyramids.clip} embeds in {emb.shape[1]} dimensions, the prior was "
                             f"conditioned on {prior.clip_dim}")
        return emb

    def _settings(self, steps: int | None, guidance: float | None = None) -> str:
        text = self.describe_prior(steps, conditioned=guidance is not None)
        return text if guidance is None else f"cfg {guidance}, {text}"

    # --- modes ----------------------------------------------------------------------------

    def from_image(self, path: str | Path | bytes, n: int, seed: int, vary: float | None = None,
                   steps: int | None = None, prompt: str | None = None, guidance: float | None = None) -> list[Row]:
        """Reconstruction, then variations: new noise, or (``vary`` = T) the code moved along the flow to T and back.

        Variations along the flow share the reconstruction's noise, so they differ from it by their code
        alone: T = 0 gives the reconstruction. With a ``prompt`` they are edits: the code is integrated back
        under the prompt's condition (this face, but smiling). ``path`` may be an image's bytes (:meth:`load_image`).
        """
        image = self.load_image(path)
        name = "upload" if isinstance(path, bytes) else Path(path).name
        code = self.code_from_image(image)
        source = resize(image, self.resolution)
        if vary is None:
            out = self.generate(code.expand(n, -1, -1), self.noise(n, seed))
            return [Row(f"image: {name}", torch.cat([source, out]),
                        ["input", "reconstruction"] + [f"variation {i}" for i in range(1, n)])]
        varied = self.edit_codes(code.expand(n - 1, -1, -1), vary, seed, prompt, guidance, steps)
        # one code per pass: a batched pass differs from a single one in the last bits, and T = 0 must give
        # the reconstruction exactly
        out = torch.cat([self.generate(c[None], self.noise(1, seed)) for c in torch.cat([code, varied])])
        what = (f'edits toward "{prompt}" at T={vary} ({self._settings(steps, self._guidance(guidance))})' if prompt
                else f"flow variations at T={vary} ({self._settings(steps)})")
        return [Row(f"image: {name}, {what}", torch.cat([source, out]),
                    ["input", "reconstruction"] + [f"T={vary} #{i}" for i in range(1, n)])]

    def edit_codes(self, codes: torch.Tensor, t: float, seed: int, prompt: str | list[str] | None = None,
                   guidance: float | None = None, steps: int | None = None) -> torch.Tensor:
        """``codes`` noised to flow time ``t`` and integrated back, under a prompt (one, or one per code) or none."""
        prior = self.flow("--vary")
        cond = None
        if prompt is not None:
            prompts = [prompt] * len(codes) if isinstance(prompt, str) else prompt
            cond = self.text_condition(prompts)
        return prior.vary(codes, t, torch.Generator().manual_seed(seed), cond=cond, steps=steps,
                          guidance=self._guidance(guidance))

    def _guidance(self, guidance: float | None) -> float:
        return self.flow("--prompt").cfg.guidance if guidance is None else guidance

    def from_prompts(self, prompts: list[str], n: int, seed: int, guidance: float | None = None,
                     steps: int | None = None) -> list[Row]:
        """Per prompt, ``n`` codes from the prior conditioned on its text embedding (the same noise for every prompt).

        So column ``i`` of every row starts from the same prior noise and
        the same generator noise: down a column, only the words change.
        """
        guidance = self._guidance(guidance)
        return [Row(f'"{prompt}" ({self._settings(steps, guidance)})',
                    self.from_condition(emb[None].expand(n, -1), seed, guidance, steps))
                for prompt, emb in zip(prompts, self.text_condition(prompts), strict=True)]

    def from_condition(self, cond: torch.Tensor, seed: int, guidance: float | None = None,
                       steps: int | None = None) -> torch.Tensor:
        """Images of the prior's codes for ``cond`` ``[n, clip_dim]`` (unit vectors), with the noise of ``seed``."""
        codes = self.flow("--prompt").sample(len(cond), torch.Generator().manual_seed(seed), cond=cond,
                                             guidance=self._guidance(guidance), steps=steps)
        return self.generate(codes, self.noise(len(cond), seed))

    def prior_codes(self, n: int, seed: int, kind: str = "flow", steps: int | None = None) -> torch.Tensor:
        """Unconditional codes from the flow prior, or from the PCA Gaussian baseline (``kind="pca"``)."""
        g = torch.Generator().manual_seed(seed)
        return self.pca().sample(n, g) if kind == "pca" else self.flow("--prior").sample(n, g, steps=steps)

    def from_prior(self, n: int, seed: int, kind: str = "flow", steps: int | None = None,
                   codes: torch.Tensor | None = None) -> list[Row]:
        """Images of :meth:`prior_codes` (or of ``codes`` drawn by it already), with the noise of ``seed + 1``."""
        codes = self.prior_codes(n, seed, kind, steps) if codes is None else codes
        label = ("prior: PCA Gaussian (baseline)" if kind == "pca"
                 else f"prior: flow matching, unconditional ({self._settings(steps)})")
        return [Row(label, self.generate(codes, self.noise(n, seed + 1)))]

    def mix(self, a: str | Path, b: str | Path, region: str, seed: int) -> list[Row]:
        ca, cb = (self.code_from_image(self.load_image(p)) for p in (a, b))
        noise = self.noise(1, seed).expand(4)
        codes = torch.cat([ca, cb, swap_region(ca, cb, region), swap_region(cb, ca, region)])
        return [Row(f"mix ({region})", self.generate(codes, noise),
                    ["A", "B", f"A + {region} of B", f"B + {region} of A"])]


def swap_region(base: torch.Tensor, donor: torch.Tensor, region: str) -> torch.Tensor:
    """``base`` with one half of its token grid taken from ``donor``."""
    if region not in REGIONS:
        raise ValueError(f"unknown region '{region}' (choose from {', '.join(REGIONS)})")
    b, t, d = base.shape
    g = int(round(t ** 0.5))
    out, src = base.clone().view(b, g, g, d), donor.view(b, g, g, d)
    h = g // 2
    sl = {"top": (slice(0, h), slice(None)), "bottom": (slice(g - h, g), slice(None)),
          "left": (slice(None), slice(0, h)), "right": (slice(None), slice(g - h, g))}[region]
    out[:, sl[0], sl[1]] = src[:, sl[0], sl[1]]
    return out.view(b, t, d)


def _sampler(run: str | Path | Sampler, teacher: bool = False) -> Sampler:
    """A loaded run is reused: each grid of `raydino run` would otherwise load the generator and encoders again."""
    if isinstance(run, Sampler):
        return run if run.teacher == teacher else run.variant(teacher)
    return Sampler(run, teacher=teacher)


def noise_grid(run: str | Path | Sampler, images: list[str], out: str | Path, n: int = 8, seed: int = 0) -> list[Row]:
    """Per image a row: the input, then ``n`` draws for its one coarse code. What the noise decides, and what not."""
    sampler = _sampler(run)
    rows = [Row(f"{Path(path).name}: input, then {n} noise draws ({sampler.cfg.loss.kind} loss)",
                sampler.from_image(path, n, seed)[0].images) for path in images]
    save_grid(rows, out)
    return rows


def check_flags(*, from_image: str | None, vary: float | None, prompts: list[str] | None, cfg_scale: float | None,
                prior: str | None, mix: list[str] | None, steps: int | None) -> None:
    """Refuse a request that cannot be sampled, naming the flag, before any model loads."""
    if not (from_image or prompts or prior or mix):
        raise ValueError("choose a mode: --from-image PATH, --prompt TEXT, --prior [flow|pca] or --mix A B")
    if prompts is not None and any(not p.strip() for p in prompts):
        raise ValueError("--prompt: empty prompt: give some text to condition on")
    if vary is not None and not from_image:
        raise ValueError("--vary: needs --from-image (the image whose code to vary)")
    if vary is not None and not 0.0 <= vary <= 1.0:
        raise ValueError(f"--vary: T must be in [0, 1] (0: the reconstruction, 1: a new code), got {vary}")
    if steps is not None and steps < 1:
        raise ValueError(f"--steps: K must be at least 1, got {steps}")
    if cfg_scale is not None and not prompts:
        raise ValueError("--cfg: guidance applies to --prompt samples")
    if prior is not None and prior not in PRIORS:
        raise ValueError(f"--prior: '{prior}' is not one of {', '.join(PRIORS)}")


def sample(run: str | Path | Sampler, out: str | Path, *, from_image: str | None = None, vary: float | None = None,
           prompts: list[str] | None = None, cfg_scale: float | None = None, prior: str | None = None,
           mix: list[str] | None = None, region: str = "top", steps: int | None = None, n: int = 8, seed: int = 0,
           save_each_dir: bool = False, teacher: bool = False) -> list[Row]:
    """Run every requested mode and write one labelled grid to ``out``.

    ``prior``: ``"flow"`` (the flow-matching prior) or ``"pca"`` (the
    baseline); ``steps``: the prior's K, ``cfg_scale``: the prompts'
    guidance (default: the prior's config); ``teacher``: the prior itself
    even where the run has a distilled student. ``from_image`` with ``prompts``
    and ``vary`` edits the image toward each prompt, one row each, instead
    of sampling the prompts from scratch.
    """
    check_flags(from_image=from_image, vary=vary, prompts=prompts, cfg_scale=cfg_scale, prior=prior, mix=mix,
                steps=steps)
    sampler = _sampler(run, teacher)
    rows: list[Row] = []
    edits = bool(from_image and prompts and vary is not None)  # --from-image X --prompt P --vary T: this face, but P
    if from_image and not edits:
        rows += sampler.from_image(from_image, n, seed, vary=vary, steps=steps)
    if edits:
        rows += [row for p in prompts for row in sampler.from_image(from_image, n, seed, vary=vary, steps=steps,
                                                                   prompt=p, guidance=cfg_scale)]
    elif prompts:
        rows += sampler.from_prompts(prompts, n, seed, guidance=cfg_scale, steps=steps)
    if prior:
        rows += sampler.from_prior(n, seed, kind=prior, steps=steps)
    if mix:
        rows += sampler.mix(mix[0], mix[1], region, seed)
    save_grid(rows, out)
    if save_each_dir:
        save_each(rows, Path(out).with_suffix(""))
    return rows
