"""What ``raydino serve`` computes, without Ray: checked requests in, images out.

Many ``/generate`` requests share one generator pass: the prior integrates
once per group of requests that ask for the same guidance and steps, the
generator once for the whole batch. Each request draws what ``raydino
sample`` draws for its seed (the prior's start from ``seed``, the
generator's noise from ``seed``, or ``seed + 1`` without a prompt), so a
seed gives the same faces served alone, in a batch, or sampled; a batched
pass can differ from a single one in a float's last bits, below a PNG's
1/255 in all but rare pixels.
"""

from __future__ import annotations

import io
import unicodedata
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision.transforms.functional import to_pil_image

from raydino.config import ServeConfig
from raydino.models.generator import Noise
from raydino.sampling import Sampler


class BadRequest(ValueError):
    """A request the server refuses with a 4xx: the message says which field and why."""


@dataclass(frozen=True)
class Ask:
    """One ``/generate`` request: ``prompt`` None draws unconditional faces."""

    prompt: str | None
    n: int
    seed: int
    guidance: float | None = None
    steps: int | None = None


def _integer(value: object, name: str, low: int, high: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        raise BadRequest(f"{name}={value} must be {f'in [{low}, {high}]' if high is not None else f'at least {low}'}")
    return value


def ask_from(body: object, limits: ServeConfig, text: bool) -> Ask:
    """A ``/generate`` JSON body, checked field by field: ``{prompt?, n, seed?, cfg?, steps?}``."""
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object, got {type(body).__name__}")
    unknown = set(body) - {"prompt", "n", "seed", "cfg", "steps"}
    if unknown:
        raise BadRequest(f"unknown fields {sorted(unknown)}: the fields are prompt, n, seed, cfg, steps")
    prompt = _prompt(body.get("prompt"), limits, text, "unconditional faces")
    guidance = _guidance(body.get("cfg"))
    steps = body.get("steps")
    return Ask(prompt=prompt,
               n=_integer(body.get("n", 1), "n", 1, limits.max_images),
               seed=_integer(body.get("seed", 0), "seed", 0, 2**63 - 2),
               guidance=guidance,
               steps=None if steps is None else _integer(steps, "steps", 1, limits.max_steps))


def edit_from(prompt: str | None, cfg: str | None, limits: ServeConfig, text: bool) -> tuple[str | None, float | None]:
    """``/vary``'s ``prompt`` and ``cfg`` query parameters, checked as ``/generate``'s fields: (prompt, guidance).

    ``cfg`` comes as text, so that a non-number is refused with the same
    message as ``/generate``'s; without a prompt it would guide nothing.
    """
    if cfg is not None and prompt is None:
        raise BadRequest("cfg is the guidance of a prompt's edits: give a prompt, or leave out cfg")
    return _prompt(prompt, limits, text, "flow variations"), _guidance(_number(cfg))


def _prompt(prompt: object, limits: ServeConfig, text: bool, without: str) -> str | None:
    """A prompt, stripped, or None; ``without`` says what a request without one gets."""
    if prompt is None:
        return None
    if not isinstance(prompt, str) or not _visible(prompt):
        raise BadRequest(f"prompt must be a non-empty string (leave it out for {without})")
    if len(prompt) > limits.max_prompt_chars:
        raise BadRequest(f"prompt is {len(prompt)} characters, over serve.max_prompt_chars={limits.max_prompt_chars}")
    if not text:
        raise BadRequest("this run's prior is unconditional (its pyramid had no CLIP column): leave out prompt")
    return prompt.strip()


def _visible(text: str) -> bool:
    """Whether ``text`` shows anything: not only spaces and invisible format characters (a zero-width space)."""
    return any(not c.isspace() and unicodedata.category(c) != "Cf" for c in text)


def _guidance(value: object) -> float | None:
    """``cfg``: None (the prior's own guidance) or a number in [0, 20]."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 20:
        raise BadRequest(f"cfg must be a number in [0, 20], got {value!r}")
    return float(value)


def _number(text: str | None) -> float | str | None:
    """A query parameter as a float where it reads as one, else as given: the check names what came."""
    try:
        return None if text is None else float(text)
    except ValueError:
        return text


def png(image: torch.Tensor) -> bytes:
    """One [3, H, W] image in [0, 1] as PNG bytes."""
    buf = io.BytesIO()
    to_pil_image(image).save(buf, format="PNG")
    return buf.getvalue()


class Faces:
    """A trained run's generator, flow prior and CLIP text tower, loaded once."""

    def __init__(self, run_dir: str | Path, device: str | None = None, teacher: bool = False):
        self.sampler = Sampler(run_dir, device, teacher=teacher)
        self.prior = self.sampler.flow("raydino serve")
        self.text = bool(self.prior.clip_dim)
        if self.text:
            self.sampler.text_condition(["a face"])  # loads CLIP now, not on the first prompt

    @torch.no_grad()
    def generate(self, asks: list[Ask]) -> list[torch.Tensor]:
        """``[n, 3, H, W]`` images in [0, 1] for each ask, every ask's in one generator pass."""
        device = self.sampler.device
        codes: list[torch.Tensor | None] = [None] * len(asks)
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, ask in enumerate(asks):
            prompted = ask.prompt is not None  # guidance means nothing without a prompt: one group for all of those
            groups[(prompted, ask.guidance if prompted else None, ask.steps)].append(i)
        for (prompted, guidance, steps), members in groups.items():
            sizes = [asks[i].n for i in members]
            start = torch.cat([torch.randn(asks[i].n, self.prior.tokens, self.prior.dim,
                                           generator=torch.Generator().manual_seed(asks[i].seed)) for i in members])
            cond = None
            if prompted:
                emb = self.sampler.text_condition([asks[i].prompt for i in members])
                cond = torch.cat([e[None].expand(n, -1) for e, n in zip(emb, sizes, strict=True)])
                guidance = self.prior.cfg.guidance if guidance is None else guidance
            flow = self.prior.integrate(start.to(device), 1.0, cond, steps=steps, guidance=guidance)
            for i, part in zip(members, self.prior.to_codes(flow).split(sizes), strict=True):
                codes[i] = part
        noise = Noise.cat([self.sampler.noise(a.n, a.seed if a.prompt is not None else a.seed + 1) for a in asks])
        images = self.sampler.generate(torch.cat(codes), noise)
        return list(images.split([a.n for a in asks]))

    def vary(self, image: bytes, t: float, n: int, seed: int, steps: int | None = None, prompt: str | None = None,
             guidance: float | None = None) -> torch.Tensor:
        """The upload's reconstruction and ``n - 1`` variations along the flow at ``t`` (``raydino sample --vary``).

        With a ``prompt`` the variations are edits: integrated back from ``t`` under the prompt, so they keep
        what ``t`` leaves of the face and take the words (``--from-image --vary --prompt``).
        """
        (row,) = self.sampler.from_image(image, n, seed, vary=t, steps=steps, prompt=prompt, guidance=guidance)
        return row.images[1:]  # without the input
