"""Load the frozen encoders (DINOv2, open_clip) the same way everywhere.

Real runs name hub models; offline runs and tests name local directories
written by ``raydino tiny-models``. Both go through the same functions, and
every load reports what it loaded (source and a short hash of the weights),
so a run can never silently train against random weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from raydino.config import PyramidConfig, is_local

log = logging.getLogger(__name__)

MARKER = "RAYDINO_TINY.txt"  # beside `raydino tiny-models` weights: what they are (random, or trained on what)
TINY_HINT = ("run `raydino tiny-models --faces FACES_DIR --out DIR` for offline tiny models, or download the weights "
             "and pass their directory (docs/offline.md)")


class ModelNotFoundError(FileNotFoundError):
    """A model spec that names nothing loadable."""


def weights_hash(module: nn.Module) -> str:
    """A short, order-stable hash of the parameters: which weights were used."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:12]


def _marker(directory: str) -> str:
    """``: <what the weights are>`` for ``raydino tiny-models`` output, else nothing."""
    path = Path(directory) / MARKER
    return f": {path.read_text().strip()}" if path.is_file() else ""


@dataclass
class Dino:
    """A frozen DINOv2 with what the pyramid and the loss need to use it."""

    model: nn.Module
    source: str
    hash: str
    patch_size: int
    dim: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self) -> dict:
        return {"source": self.source, "hash": self.hash, "patch_size": self.patch_size, "dim": self.dim}


def load_dino(spec: str, device: str | torch.device = "cpu") -> Dino:
    """Load ``facebook/dinov2-*`` (or any Dinov2Model) from the hub or a directory."""
    from transformers import AutoImageProcessor, Dinov2Model

    if not spec:
        raise ModelNotFoundError(f"no DINOv2 model given: {TINY_HINT}")
    local = is_local(spec)
    path = spec.removeprefix("file://")
    if local and not Path(path).expanduser().is_dir():
        raise ModelNotFoundError(f"DINOv2 model directory not found: {path}: {TINY_HINT}")
    source = str(Path(path).expanduser().resolve()) if local else spec
    try:
        model = Dinov2Model.from_pretrained(source, attn_implementation="sdpa", local_files_only=local)
        processor = AutoImageProcessor.from_pretrained(source, local_files_only=local)
    except OSError as exc:
        raise ModelNotFoundError(f"cannot load DINOv2 '{spec}': {exc}. {TINY_HINT}") from exc
    model.eval().requires_grad_(False).to(device)
    dino = Dino(
        model=model,
        source=source,
        hash=weights_hash(model),
        patch_size=int(model.config.patch_size),
        dim=int(model.config.hidden_size),
        mean=tuple(processor.image_mean),
        std=tuple(processor.image_std),
    )
    log.info("DINOv2 weights: %s (hash %s, dim %d)%s", dino.source, dino.hash, dino.dim, _marker(source))
    return dino


@dataclass
class Clip:
    """An open_clip model with its own preprocessing and tokenizer."""

    model: nn.Module
    preprocess: object
    tokenizer: object
    source: str
    hash: str
    dim: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self) -> dict:
        return {"source": self.source, "hash": self.hash, "dim": self.dim}

    @torch.no_grad()
    def encode_text(self, prompts: list[str]) -> torch.Tensor:
        """L2-normalised text embeddings; an empty prompt is refused."""
        for p in prompts:
            if not p.strip():
                raise ValueError("empty prompt: give some text to condition on")
        device = next(self.model.parameters()).device
        tokens = self.tokenizer(prompts).to(device)
        return nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)

    def encode_image(self, pixels: torch.Tensor) -> torch.Tensor:
        """L2-normalised image embeddings of CLIP-normalised ``pixels``."""
        return nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)


def clip_model_name(spec: str) -> tuple[str, str | None]:
    """Turn a CLIP spec into open_clip's (model_name, pretrained) arguments.

    ``NAME:TAG`` is a built-in architecture with a pretrained tag,
    ``hf-hub:org/repo`` a hub repo, anything else a local directory holding
    ``open_clip_config.json`` and its weights.
    """
    if spec.startswith(("hf-hub:", "local-dir:")):
        return spec, None
    if is_local(spec):
        path = Path(spec.removeprefix("file://")).expanduser()
        if not (path / "open_clip_config.json").is_file():
            raise ModelNotFoundError(f"CLIP model directory not found or incomplete: {path}: {TINY_HINT}")
        return f"local-dir:{path.resolve()}", None
    if ":" in spec:
        name, tag = spec.split(":", 1)
        return name, tag
    raise ModelNotFoundError(f"CLIP spec '{spec}' names no weights: use NAME:PRETRAINED_TAG, hf-hub:ORG/REPO or a directory")


def load_clip(spec: str, device: str | torch.device = "cpu") -> Clip:
    """Load an open_clip model; refuses to run without pretrained weights."""
    import open_clip

    name, pretrained = clip_model_name(spec)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name, pretrained=pretrained, require_pretrained=True, device=device
        )
    except (RuntimeError, FileNotFoundError, ValueError, OSError) as exc:
        raise ModelNotFoundError(f"cannot load CLIP '{spec}': {exc}. {TINY_HINT}") from exc
    model.eval().requires_grad_(False)
    visual = model.visual
    size = visual.image_size if isinstance(visual.image_size, int) else visual.image_size[0]
    clip = Clip(
        model=model,
        preprocess=preprocess,
        tokenizer=open_clip.get_tokenizer(name),
        source=name if pretrained is None else f"{name}:{pretrained}",
        hash=weights_hash(model),
        dim=int(visual.output_dim),
        image_size=int(size),
        mean=tuple(visual.preprocess_cfg["mean"]),
        std=tuple(visual.preprocess_cfg["std"]),
    )
    log.info("CLIP weights: %s (hash %s, dim %d)%s", clip.source, clip.hash, clip.dim,
             _marker(name.removeprefix("local-dir:")))
    return clip


def require_local(spec: str, key: str) -> None:
    """Fail on the driver, naming the config key, when a local model directory a worker will load is not there."""
    if spec and is_local(spec) and not Path(spec.removeprefix("file://")).expanduser().is_dir():
        raise ModelNotFoundError(f"{key}={spec}: no model directory there: {TINY_HINT}")


class EncoderMismatch(ValueError):
    """A configured encoder whose weights are not the ones a pyramid was made with."""


def _bind(kind: str, key: str, named: str, made: dict, load, where: str) -> str:
    """The source to load for one encoder: ``named`` if it holds the pyramid's weights, else the pyramid's own."""
    if named == made["source"]:
        return named
    if named:
        try:
            model = load(named)
        except ModelNotFoundError:
            log.info("%s %s=%s is not there; using the pyramid's %s %s (hash %s)", where, key, named, kind,
                     made["source"], made["hash"])
            return made["source"]
        if model.hash != made["hash"]:
            raise EncoderMismatch(f"{key}={named} has weights hash {model.hash}, but the pyramid {where} was made "
                                  f"with {kind} {made['source']} (hash {made['hash']}): use that {kind}, or "
                                  "recompute the pyramid with this one")
        return named
    return made["source"]


def bind_encoders(pyramids: PyramidConfig, manifest: dict, where: str) -> PyramidConfig:
    """A copy of a run's ``PyramidConfig`` pointing at the DINOv2 and CLIP its pyramid was made with.

    The manifest names each encoder's source and weights hash. A configured
    encoder that holds the same weights is kept; one that is not there (the
    preset's default path on another machine, say) gives way to the
    manifest's, said in the log; one with other weights is an error naming
    both. A pyramid without a CLIP column turns text conditioning off.
    """
    dino = _bind("DINOv2", "pyramids.dino", pyramids.dino, manifest["dino"], load_dino, where)
    clip = manifest.get("clip")
    if not clip:
        if pyramids.clip:
            log.info("%s has no CLIP column: text conditioning is off for this run", where)
        return dataclasses.replace(pyramids, dino=dino, clip="")
    named = pyramids.clip
    if named and is_local(named) and Path(named).expanduser().is_dir():
        named = clip_model_name(named)[0]  # the spelling the manifest uses: local-dir:/absolute/path
    return dataclasses.replace(pyramids, dino=dino, clip=_bind("CLIP", "pyramids.clip", named, clip, load_clip, where))


JUDGE_WEIGHTS = "model.safetensors"


def save_weights(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, with the header's metadata in sorted order.

    safetensors writes the metadata in its hash map's order, which changes
    from process to process, so equal weights would give files that differ
    in bytes. Sorting changes no byte count, so the header keeps its length.
    """
    from safetensors.torch import save

    data = memoryview(save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))
    size = int.from_bytes(data[:8], "little")
    header = bytes(data[8:8 + size])
    head = json.loads(header)
    if "__metadata__" in head:
        head["__metadata__"] = dict(sorted(head["__metadata__"].items()))
        text = json.dumps(head, separators=(",", ":"), ensure_ascii=False).encode()
        if len(text) <= size:  # the library pads its header with spaces
            header = text.ljust(size)
    with open(path, "wb") as f:  # the tensors' bytes are written from the library's buffer, not copied
        f.write(data[:8])
        f.write(header)
        f.write(data[8 + size:])


def save_judge(model: nn.Module, out: str | Path, header: dict[str, str]) -> Path:
    """A synthetic-face judge (attribute classifier, part segmenter): its weights, with what rebuilds it in the header."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), out / JUDGE_WEIGHTS, header)
    return out


def load_judge(path: str | Path, what: str, build) -> tuple[nn.Module, str]:
    """The judge in ``path``, built by ``build(header)``, frozen, and a description naming its source and hash."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    file = Path(path).expanduser() / JUDGE_WEIGHTS
    if not file.is_file():
        raise ModelNotFoundError(f"{what} not found: {file} (written by `raydino tiny-models --faces DIR`)")
    with safe_open(str(file), "pt") as f:
        header = f.metadata()
    model = build(header)
    model.load_state_dict(load_file(str(file)))
    model.eval().requires_grad_(False)
    description = f"{file.parent.resolve()} (hash {weights_hash(model)}; {header.get('note', '')})"
    log.info("%s: %s", what, description)
    return model, description
