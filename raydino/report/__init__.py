"""``raydino report``: one static HTML page of a run, to look at rather than read logs.

The page is a plain file (no server, no JavaScript): images are copied into
a folder beside it (``index_files/`` for ``index.html``) and curves are
inline SVG drawn here from the TensorBoard event files. It shows the key
figures of ``eval.json``, the validation grids of every stage, the samples of
``raydino sample`` (reconstructions, prompts with their CLIP scores, prior,
mix), the attribute agreement per attribute, the DINOv2 pyramid itself as PCA
colours, the training curves, the Tune trials and, for ``raydino
tiny-models`` encoders, their linear probes. A section whose inputs are missing says so and names the
command that makes them; one unreadable input never costs the whole page.

Every figure is printed with :func:`fmt` (4 significant digits), so the
page can be checked against the JSON and CSV it was made from.
"""

from __future__ import annotations

import csv
import html
import io
import json
import logging
import math
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from raydino.config import Config, load_config
from raydino.data.captions import describe_text

log = logging.getLogger(__name__)

PCA_IMAGES = 6      # images in the pyramid picture
PCA_CELL = 96       # px per image in the pyramid picture
SNAPSHOTS = 6       # validation grids per stage taken from TensorBoard
GRID_ROWS = 4       # rows of 4 (generated, target) pairs shown per grid
CURVE_POINTS = 400  # points per drawn curve at most
PAGE_WIDTH = 1080   # px available to an image inside a section
PALETTE = ["#3b6fd8", "#e8793a", "#2a9d8f", "#d64f6a", "#8a63c9", "#b08a2e", "#5a8f3c", "#6b7280"]
SAMPLE_FILES = {  # file in the samples folder -> (section id, title, what it shows, command that makes it)
    "image.png": ("reconstructions", "Reconstructions and variations",
                  "First column: the input image; second: the generator's reconstruction from its coarse code "
                  "(its coarsest DINOv2 level) alone; the rest: the same code with new noise.",
                  "raydino sample --run RUN --from-image IMAGE --out SAMPLES/image.png"),
    "prompts.png": ("prompts", "Text prompts",
                    "Each row: one prompt, CLIP text embedding -> coarse code -> image, with different noise.",
                    "raydino sample --run RUN --prompt TEXT ... --out SAMPLES/prompts.png"),
    "vary.png": ("vary", "Variations along the flow",
                 "The input, its reconstruction, then its coarse code noised to flow time T = 0.5 and carried back "
                 "by the prior (same generator noise: only the code varies).",
                 "raydino sample --run RUN --from-image IMAGE --vary 0.5 --out SAMPLES/vary.png"),
    "prior.png": ("prior", "Samples from the flow prior",
                  "Coarse codes drawn by the flow-matching prior (unconditional, K ODE steps), one generator pass each.",
                  "raydino sample --run RUN --prior --out SAMPLES/prior.png"),
    "prior_pca.png": ("prior-pca", "Samples from the PCA Gaussian (baseline)",
                      "Coarse codes drawn from the Gaussian in PCA space fitted on a bounded sample of training codes.",
                      "raydino sample --run RUN --prior pca --out SAMPLES/prior_pca.png"),
    "mix.png": ("mix", "Mixing coarse codes",
                "A and B, then A with one half of its coarse token grid taken from B, and the other way round.",
                "raydino sample --run RUN --mix A B --out SAMPLES/mix.png"),
}


def fmt(value: object) -> str:
    """How the page prints a figure: 4 significant digits for floats, as is otherwise."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def _number(text: str) -> object:
    """A CSV cell as int, float, bool or the text itself."""
    if text in ("True", "False"):
        return text == "True"
    if "_" in text:  # int() and float() read "65071_00000" (a Tune trial id) as a number
        return text
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _read_json(path: Path) -> dict | None:
    """The file's JSON, ``None`` when it is absent; an unreadable file is an error naming it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None


# --- where the inputs are --------------------------------------------------------------------


@dataclass
class Inputs:
    """The folders a report reads; ``None`` where there is none."""

    run: Path
    out: Path
    sweep: Path | None = None
    pyramids: Path | None = None
    samples: Path | None = None


def find_inputs(run: str | Path, sweep: str | Path | None = None, pyramids: str | Path | None = None,
                samples: str | Path | None = None, out: str | Path | None = None) -> Inputs:
    """Explicit folders win; the others follow ``raydino run``'s layout (``OUT/runs/train`` is the run).

    The pyramid defaults to the held-out one (``OUT/pyramids-val``), then the
    training one, then the one ``eval.json`` names.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    root = run.parent.parent if run.parent.name == "runs" else None

    def pick(given, *candidates):
        if given is not None:
            return Path(given)
        return next((Path(c) for c in candidates if c is not None and Path(c).exists()), None)

    try:
        evaluation = _read_json(run / "eval.json") or {}
    except ValueError:  # said in the key figures section
        evaluation = {}
    return Inputs(
        run=run,
        out=Path(out) if out else (root or run) / "report" / "index.html",
        sweep=pick(sweep, root and root / "sweep"),
        pyramids=pick(pyramids, root and root / "pyramids-val", root and root / "pyramids", evaluation.get("pyramids")),
        samples=pick(samples, root and root / "samples"),
    )


# --- images beside the page ------------------------------------------------------------------


class Assets:
    """Images copied or written into the folder beside the page; ``src`` paths are relative to the page."""

    def __init__(self, page: Path):
        self.folder = page.parent / f"{page.stem}_files"
        if self.folder.exists():
            shutil.rmtree(self.folder)  # the page's own folder: stale images would otherwise linger
        self.folder.mkdir(parents=True)

    def add(self, name: str, image: Path | bytes | np.ndarray) -> tuple[str, tuple[int, int]]:
        """Store ``image`` (a file, encoded bytes, or uint8 HxWx3) as ``name``; return its src and size."""
        dest = self.folder / name
        if isinstance(image, Path):
            shutil.copyfile(image, dest)
        elif isinstance(image, bytes):
            dest.write_bytes(image)
        else:
            Image.fromarray(image).save(dest)
        with Image.open(dest) as img:
            size = img.size
        return f"{self.folder.name}/{name}", size

    def img(self, name: str, image: Path | bytes | np.ndarray, alt: str, min_width: int = 0,
            width: int = 0) -> str:
        """An ``<img>`` shown ``width`` px wide, or scaled up by a whole factor to at least ``min_width`` px."""
        src, (w, h) = self.add(name, image)
        scale = width / w if width else max(1, math.ceil(min_width / w)) if min_width else 1
        scale = min(scale, PAGE_WIDTH / w)
        crisp = ' class="px"' if scale >= 1 else ""  # nearest-neighbour only when enlarging
        return (f'<img{crisp} src="{_esc(src)}" width="{round(w * scale)}" height="{round(h * scale)}" '
                f'alt="{_esc(alt)}">')


# --- inputs: TensorBoard ---------------------------------------------------------------------


@dataclass
class Events:
    """What a TensorBoard folder holds: scalar series and encoded images, by tag."""

    scalars: dict[str, tuple[list[int], list[float]]] = field(default_factory=dict)
    images: dict[str, list[tuple[int, bytes]]] = field(default_factory=dict)


def read_events(tb_dir: Path, images: bool = True) -> Events:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not tb_dir.is_dir() or not any(tb_dir.glob("events.out.tfevents.*")):
        return Events()
    # images: a uniform reservoir sample per tag, so a long run's grids never all sit in memory
    acc = EventAccumulator(str(tb_dir), size_guidance={"scalars": 0, "images": 2 * SNAPSHOTS if images else 1})
    acc.Reload()
    tags = acc.Tags()
    out = Events()
    for tag in tags.get("scalars", []):
        points = acc.Scalars(tag)
        out.scalars[tag] = ([p.step for p in points], [p.value for p in points])
    for tag in tags.get("images", []) if images else []:
        out.images[tag] = [(p.step, p.encoded_image_string) for p in acc.Images(tag)]
    return out


# --- inline SVG line charts ------------------------------------------------------------------


@dataclass
class Series:
    label: str
    steps: list[float]
    values: list[float]
    bold: bool = False


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[lo, hi]``."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    return [round(first + i * step, 12) for i in range(int((hi - first) / step + 1e-9) + 1)]


def line_chart(title: str, series: list[Series], note: str = "", marks: list[tuple[float, str]] = (),
               hlines: list[tuple[float, str]] = (), xmax: float = 0.0) -> str:
    """A small SVG line chart from step 0 (to ``xmax`` at least), with stage marks and dashed baselines."""
    w, h, left, right, top, bottom = 340, 200, 46, 10, 12, 26
    ys = [y for s in series for y in s.values if math.isfinite(y)] + [v for v, _ in hlines]
    x0, x1 = 0.0, max([xmax, *(x for s in series for x in s.steps)])
    marks = [(x, label) for x, label in marks if x < x1]
    y0, y1 = min(ys), max(ys)
    pad = (y1 - y0) * 0.08 or abs(y1) * 0.1 or 1.0
    y0, y1 = y0 - pad, y1 + pad
    x1 = x1 if x1 > x0 else x0 + 1

    def px(x: float) -> float:
        return left + (x - x0) / (x1 - x0) * (w - left - right)

    def py(y: float) -> float:
        return top + (y1 - y) / (y1 - y0) * (h - top - bottom)

    parts = [f'<rect x="{left}" y="{top}" width="{w - left - right}" height="{h - top - bottom}" class="plot"/>']
    for t in nice_ticks(y0, y1):
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{py(t):.1f}" y2="{py(t):.1f}" class="grid"/>'
                     f'<text x="{left - 5}" y="{py(t) + 3.5:.1f}" class="tick" text-anchor="end">{t:.3g}</text>')
    for t in nice_ticks(x0, x1, 6)[1:]:
        parts.append(f'<text x="{px(t):.1f}" y="{h - bottom + 14}" class="tick" text-anchor="middle">{t:g}</text>')
    parts.append(f'<text x="{left - 5}" y="{h - bottom + 14}" class="tick" text-anchor="end">step</text>')
    for x, label in marks:
        parts.append(f'<line x1="{px(x):.1f}" x2="{px(x):.1f}" y1="{top}" y2="{h - bottom}" class="mark"/>'
                     f'<text x="{px(x) + 3:.1f}" y="{top + 10}" class="marklabel">{_esc(label)}</text>')
    for y, label in hlines:
        parts.append(f'<line x1="{left}" x2="{w - right}" y1="{py(y):.1f}" y2="{py(y):.1f}" class="base"/>'
                     f'<text x="{w - right - 3}" y="{py(y) - 3:.1f}" class="marklabel" text-anchor="end">'
                     f'{_esc(label)} {fmt(y)}</text>')
    legend = []
    for i, s in enumerate(series):
        colour = PALETTE[i % len(PALETTE)]
        stride = math.ceil(len(s.steps) / CURVE_POINTS)
        keep = [*range(0, len(s.steps) - 1, stride), len(s.steps) - 1]
        pts = " ".join(f"{px(s.steps[j]):.1f},{py(s.values[j]):.1f}" for j in keep if math.isfinite(s.values[j]))
        width = 2.6 if s.bold else 1.6
        parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="{width}" '
                     f'stroke-linejoin="round"><title>{_esc(s.label)}: last {fmt(s.values[-1])}</title></polyline>')
        if len(s.steps) <= 12:
            parts += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="2.4" fill="{colour}"/>'
                      for x, y in zip(s.steps, s.values, strict=True) if math.isfinite(y)]
        legend.append(f'<span><i style="background:{colour}"></i>{_esc(s.label)} '
                      f'<b>{fmt(s.values[-1])}</b></span>')
    svg = f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="{_esc(title)}">{"".join(parts)}</svg>'
    note_html = f'<p class="note">{_esc(note)}</p>' if note else ""
    return (f'<figure class="chart"><figcaption>{_esc(title)}</figcaption>{svg}'
            f'<div class="legend">{"".join(legend)}</div>{note_html}</figure>')


# --- page pieces -----------------------------------------------------------------------------


def _missing(text: str, command: str = "") -> str:
    cmd = f' Make it with <code>{_esc(command)}</code>.' if command else ""
    return f'<p class="missing">{_esc(text)}{cmd}</p>'


def _table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(f'<tr class="{c}">' + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                   for row, c in zip(rows, row_classes or [""] * len(rows), strict=True))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def _level_label(tag: str) -> str:
    """``val/dist_56`` -> ``56 px``; ``val/dist_unweighted`` -> ``mean of levels``."""
    name = tag.rsplit("/", 1)[-1]
    if m := re.search(r"_(\d+)$", name):
        return f"{m.group(1)} px"
    return "mean of levels" if name.endswith("unweighted") else name


class Context:
    """What the sections read, each loaded on first use.

    A file that cannot be read raises inside the section that reads it, which
    then shows the error instead of its content.
    """

    def __init__(self, inputs: Inputs):
        self.inputs = inputs
        self.assets = Assets(inputs.out)

    @cached_property
    def cfg(self) -> Config | None:
        path = self.inputs.run / "config.yaml"
        return load_config(config_file=str(path)) if path.is_file() else None

    @cached_property
    def evaluation(self) -> dict | None:
        return _read_json(self.inputs.run / "eval.json")

    @cached_property
    def metrics(self) -> dict | None:
        return _read_json(self.inputs.run / "metrics.json")

    @cached_property
    def events(self) -> Events:
        return read_events(self.inputs.run / "tb")


# --- sections: each returns its HTML body --------------------------------------------------


FIGURES = [  # eval.json key, title, what it means
    ("fd_dinov2/reconstructions", "FD-DINOv2, reconstructions",
     "Fréchet distance between reconstructions of one half of the held-out images and the other half, in the "
     "CLS space of the evaluation encoder. Lower is better; the floor is two halves of real images."),
    ("fd_dinov2/prior", "FD-DINOv2, flow prior samples",
     "The same distance for unconditional samples of the flow-matching prior over the coarse code."),
    ("fd_dinov2/prior_pca", "FD-DINOv2, PCA Gaussian prior (baseline)",
     "The same distance for samples of the Gaussian in PCA space, against the same real half."),
    ("heldout/eval_dist", "Held-out distance, evaluation encoder",
     "1 − cosine between each held-out image and its reconstruction (patch and CLS, mean), under the evaluation "
     "encoder: what the sweep ranks trials by."),
    ("train_encoder/dist_unweighted", "Patch distance, training encoder",
     "1 − cosine of patch tokens, mean over levels, on held-out reconstructions. Measured by the encoder the "
     "generator was trained to match: it can look good while the images do not."),
    ("colour_error", "Colour error",
     "Mean absolute RGB difference to the stored thumbnails (0–1). DINO features barely see colour."),
    ("clip_score/matched", "CLIP score, own prompt",
     "Cosine between prompt samples and their own prompt."),
    ("clip_score/mismatched", "CLIP score, other prompts",
     "The same samples against the other prompts: text control works when this is clearly lower."),
    ("attributes/reconstructions", "Attribute agreement, reconstructions",
     "Share of the held-out targets' attributes (hair, skin, glasses, smile, background) that a classifier trained "
     "on real faces reads back from their reconstructions. Higher is better; per attribute below."),
    ("attributes/prompts", "Attribute agreement, prompt samples",
     "Share of the attributes a prompt names that its samples show."),
    ("attributes/prior_tv", "Attribute distance, prior samples",
     "Total variation between the attribute frequencies of prior samples and of real faces (0–1). Lower is better."),
]


def section_figures(ctx: Context) -> str:
    ev, m = ctx.evaluation, ctx.metrics
    parts = []
    if ev is None:
        parts.append(_missing(f"No eval.json in {ctx.inputs.run}.", "raydino eval --run RUN --pyramids HELD_OUT"))
    else:
        def floor(key: str) -> str:
            if not key.startswith("fd_dinov2/") or "fd_dinov2/floor" not in ev:
                return ""
            return (f'<div class="note">floor (real vs real) <b>{fmt(ev["fd_dinov2/floor"])}</b> '
                    f'at n = {fmt(ev.get("fd_dinov2/n"))}</div>')

        cards = [f'<div class="card"><div class="k">{_esc(title)}</div><div class="v">{fmt(ev[key])}</div>'
                 f'{floor(key)}<div class="note">{_esc(note)}</div></div>' for key, title, note in FIGURES if key in ev]
        if "set" in ev:
            parts.append(f'<p class="small">Computed on: <b>{_esc(ev["set"])}</b>; {fmt(ev.get("n"))} images at '
                         f'{fmt(ev.get("resolution"))} px (real images resized to it).</p>')
        parts.append(f'<div class="cards">{"".join(cards)}</div>')
        levels = sorted((int(k.rsplit("_", 1)[1]), v) for k, v in ev.items() if re.fullmatch(r"train_encoder/dist_\d+", k))
        if levels:
            parts.append('<p class="small">Patch distance per level (training encoder): ' + ", ".join(
                f"{s} px <b>{fmt(v)}</b>" for s, v in levels) + f'; {fmt(ev.get("n"))} held-out images.</p>')
        judge = ev.get("eval_encoder") or ev.get("fd_encoder")
        same = judge and judge.split(" (")[0] == ev.get("training_encoder", "").split(" (")[0]
        warn = (' <span class="warn">FD used the training encoder, so it is not an independent judge.</span>'
                if same else "")
        parts.append(f'<p class="small">Encoders: training <code>{_esc(ev.get("training_encoder", "?"))}</code>; '
                     f'evaluation (FD) <code>{_esc(judge or "?")}</code>.{warn}</p>')
    if m is None:
        parts.append(_missing(f"No metrics.json in {ctx.inputs.run}: training has not finished.",
                              "raydino train ... --out RUN"))
    elif "val/dist_unweighted" in m:
        baselines = "".join(f", {label} <b>{fmt(m[key])}</b>" for key, label in
                            (("step0/dist_unweighted", "untrained generator"),
                             ("mean_image/dist_unweighted", "mean image")) if key in m)
        parts.append(f'<p class="small">Training: {fmt(m.get("images_seen"))} images in {fmt(m.get("step"))} steps'
                     f'{", " + fmt(m["time_s"]) + " s" if "time_s" in m else ""}; patch distance on '
                     f'the first training rows (training encoder, watched during training) '
                     f'<b>{fmt(m["val/dist_unweighted"])}</b> (baselines{baselines}); '
                     f'{fmt(m.get("bad_steps", 0))} skipped steps.</p>')
        if "heldout/eval_dist" in m:
            parts.append(f'<p class="small">At the end of training, on {_esc(m.get("heldout_set", "held-out images"))}'
                         f': heldout/eval_dist <b>{fmt(m["heldout/eval_dist"])}</b> (step 0: '
                         f'{fmt(m.get("step0/heldout_eval_dist"))}), evaluation encoder.</p>')
    return "".join(parts)


DETAIL_FIGURES = [  # eval.json key, title, which way is better
    ("noise_spread", "noise spread (8 draws per code / across images)", "higher: the noise carries detail"),
    ("sharpness_ratio", "sharpness ratio (Laplacian variance, generated / real)", "closer to 1"),
    ("fd_dinov2/reconstructions", "FD-DINOv2, reconstructions (evaluation encoder)", "lower"),
    ("train_encoder/dist_unweighted", "patch distance, training encoder (mean of levels)", "lower"),
]


def section_detail(ctx: Context) -> str:
    """Does the noise carry detail? The run's figures beside its comparison run's (``runs/compare-<kind>``), and the grids."""
    ev = ctx.evaluation
    if ev is None or "noise_spread" not in ev:
        return _missing("No noise_spread in eval.json.", "raydino eval --run RUN --pyramids HELD_OUT")
    kind = ctx.cfg.loss.kind if ctx.cfg else "?"
    compared = sorted(ctx.inputs.run.parent.glob("compare-*/eval.json"))
    columns = [(f"this run (loss.kind={kind})", ev)]
    columns += [(f"comparison (loss.kind={p.parent.name.removeprefix('compare-')})", _read_json(p)) for p in compared]
    rows = []
    for key, title, better in DETAIL_FIGURES:
        cells = [fmt(col.get(key)) if key in col else "–" for _, col in columns]
        other = columns[1][1] if len(columns) > 1 else {}
        if key in other and ev.get(key):
            cells.append(f"{other[key] / ev[key]:.2f}×")
        elif other:
            cells.append("–")
        rows.append([_esc(title), *cells, _esc(better)])
    header = ["figure", *[name for name, _ in columns]] + (["comparison / this run"] if len(columns) > 1 else []) + ["better"]
    floor = (f'FD floor (real vs real) {fmt(ev["fd_dinov2/floor"])} at n = {fmt(ev.get("fd_dinov2/n"))}; '
             if "fd_dinov2/floor" in ev else "")
    parts = [f'<p class="lead">A generator that averages the details its coarse code leaves open ignores its noise '
             f'(spread near 0) and blurs (sharpness well below 1). Noise spread: {fmt(ev.get("noise_spread/draws"))} '
             f'draws for each of {fmt(ev.get("noise_spread/codes"))} held-out codes; sharpness over '
             f'{fmt(ev.get("sharpness_ratio/n"))} reconstructions; {floor}all at {fmt(ev.get("resolution"))} px.</p>',
             _table(header, rows)]
    folder = ctx.inputs.samples
    for filename, title in (("noise.png", f"this run (loss.kind={kind})"), ("noise-compare.png", columns[-1][0])):
        path = folder / filename if folder else None
        if path and path.is_file() and (filename == "noise.png" or len(columns) > 1):
            parts.append(f'<h3>Noise draws, {_esc(title)}</h3><p class="small">Each row: a held-out image, then 8 '
                         'draws for its one coarse code.</p>'
                         f'<div class="img">{ctx.assets.img(filename, path, title)}</div>')
    return "".join(parts)


def _grid_files(grids: Path) -> dict[int, list[tuple[int | None, Path]]]:
    """``grids/stage_<res>[_<step>].png`` by resolution; the plain file (latest) has step None."""
    out: dict[int, list[tuple[int | None, Path]]] = {}
    for p in grids.glob("stage_*.png"):
        if m := re.fullmatch(r"stage_(\d+)(?:[_-](?:step)?_?(\d+))?\.png", p.name):
            out.setdefault(int(m.group(1)), []).append((int(m.group(2)) if m.group(2) else None, p))
    return out


def spaced_pairs(image: Path | bytes, resolution: int, max_rows: int = GRID_ROWS) -> np.ndarray | None:
    """The monitor's grid (generated, target, ...; 8 tiles a row, 1 px apart) with a gap between pairs.

    At most ``max_rows`` rows are kept; ``None`` when the image does not have that layout.
    """
    with Image.open(image if isinstance(image, Path) else io.BytesIO(image)) as img:
        arr = np.asarray(img.convert("RGB"))
    cell = resolution + 1
    rows, cols = (arr.shape[0] - 1) // cell, (arr.shape[1] - 1) // cell
    if (arr.shape[0] - 1) % cell or (arr.shape[1] - 1) % cell or cols % 2 or not rows:
        return None
    rows = min(rows, max_rows)
    gap = max(3, resolution // 4)
    pair_w = 2 * resolution + 1
    out = np.full((rows * (resolution + gap) - gap, cols // 2 * (pair_w + gap) - gap, 3), 255, np.uint8)
    for r in range(rows):
        for c in range(cols):
            tile = arr[1 + r * cell: 1 + r * cell + resolution, 1 + c * cell: 1 + c * cell + resolution]
            x = c // 2 * (pair_w + gap) + c % 2 * (resolution + 1)
            y = r * (resolution + gap)
            out[y: y + resolution, x: x + resolution] = tile
    return out


def _grid(image: Path | bytes, resolution: int) -> Path | bytes | np.ndarray:
    spaced = spaced_pairs(image, resolution)
    return image if spaced is None else spaced


def section_stages(ctx: Context) -> str:
    files = _grid_files(ctx.inputs.run / "grids")
    snapshots = {int(t.split("/")[1].removesuffix("px")): v for t, v in ctx.events.images.items()
                 if re.fullmatch(r"grid/\d+px", t)}
    resolutions = sorted(set(files) | set(snapshots))
    if not resolutions:
        return _missing(f"No validation grids in {ctx.inputs.run / 'grids'} or its TensorBoard events.")
    parts = ['<p class="lead">The EMA generator on the fixed validation codes at the end of each stage: '
             'in every pair, <b>generated</b> (left) next to its <b>target</b> thumbnail (right).</p>']
    for res in resolutions:
        ordered = sorted(files.get(res, []), key=lambda f: -1 if f[0] is None else f[0])
        latest = next((p for s, p in ordered if s is None), ordered[-1][1] if ordered else None)
        parts.append(f'<h3>{res} × {res} px</h3>')
        if latest is not None:
            grid = ctx.assets.img(f"stage_{res}.png", _grid(latest, res), f"{res} px validation grid", 600)
            parts.append(f'<div class="img">{grid}</div>')
        history = [(s, p) for s, p in ordered if s is not None] or snapshots.get(res, [])
        if len(history) > SNAPSHOTS:
            idx = np.linspace(0, len(history) - 1, SNAPSHOTS).round().astype(int)
            history = [history[i] for i in idx]
        if history:
            width = min(1100 // len(history) - 12, 300)
            cells = "".join(f'<figure>{ctx.assets.img(f"stage_{res}_step{s}.png", _grid(img, res), f"step {s}", width=width)}'
                            f'<figcaption>step {s}</figcaption></figure>' for s, img in history)
            parts.append(f'<p class="small">Over training:</p><div class="strip">{cells}</div>')
    return "".join(parts)


def section_samples(ctx: Context) -> str:
    folder = ctx.inputs.samples
    if folder is None or not folder.is_dir():
        commands = "".join(f"<li><code>{_esc(cmd)}</code></li>" for _, _, _, cmd in SAMPLE_FILES.values())
        where = f"No samples folder at {folder}." if folder else "No samples folder (pass --samples)."
        return f'<p class="missing">{_esc(where)} Make the grids with:</p><ul class="small">{commands}</ul>'
    parts = []
    for filename, (sid, title, lead, command) in SAMPLE_FILES.items():
        parts.append(f'<h3 id="{sid}">{_esc(title)}</h3>')
        path = folder / filename
        if not path.is_file():
            parts.append(_missing(f"No {filename} in {folder}.", command))
            continue
        parts.append(f'<p class="lead">{_esc(lead)}</p><div class="img">{ctx.assets.img(filename, path, title)}</div>')
        if filename == "prompts.png":
            parts.append(clip_table(ctx.evaluation))
    return "".join(parts)


def clip_table(ev: dict | None) -> str:
    """Each prompt's CLIP score and its margin over the mean mismatched score."""
    scores = {k.split("/", 1)[1]: v for k, v in (ev or {}).items()
              if k.startswith("clip_score/") and k not in ("clip_score/matched", "clip_score/mismatched")}
    if not scores:
        return _missing("No CLIP scores in eval.json.", "raydino eval --run RUN --pyramids HELD_OUT --prompt TEXT")
    other = ev.get("clip_score/mismatched")
    rows = [[f'<span class="prompt">“{_esc(p)}”</span>', fmt(v)]
            + ([f'<span class="{"up" if v > other else "down"}">{v - other:+.4g}</span>'] if other is not None else [])
            for p, v in scores.items()]
    summary = ""
    if "clip_score/matched" in ev:
        summary = (f'<p class="small">Mean CLIP score with the own prompt <b>{fmt(ev["clip_score/matched"])}</b>'
                   + (f', with the other prompts <b>{fmt(ev["clip_score/mismatched"])}</b>'
                      if "clip_score/mismatched" in ev else "") + ".</p>")
    header = ["prompt", "CLIP score"] + (["minus mismatched mean"] if other is not None else [])
    return _table(header, rows) + summary


def pyramid_rows(pyramid_dir: Path, count: int) -> tuple[dict, list[int]]:
    """The first ``count`` rows (by id) of a pyramid: tokens of every level, thumbnails, source paths."""
    import pyarrow.parquet as pq

    from raydino.pyramids import schema

    manifest = schema.read_manifest(pyramid_dir)
    levels = [int(s) for s in manifest["levels"]]
    names = set(pq.read_schema(schema.shard_files(pyramid_dir)[0]).names)
    wanted = [schema.tokens_col(s) for s in levels] + [c for c in (schema.THUMB, "path") if c in names]
    return schema.read_first_rows(pyramid_dir, wanted, count), levels


def pca_rgb(tokens: np.ndarray) -> np.ndarray:
    """``[n, g*g, d]`` patch tokens -> ``[n, g, g, 3]`` in [0, 1]: the first three principal components.

    The PCA is fitted on all ``n`` images' tokens together, so one colour
    means one direction in feature space across the images.
    """
    n, t, d = tokens.shape
    g = math.isqrt(t)
    x = tokens.reshape(n * t, d).astype(np.float64)
    x -= x.mean(0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    comps = x @ vt[:3].T
    comps *= np.where(np.abs(comps.max(0)) >= np.abs(comps.min(0)), 1.0, -1.0)  # a fixed sign per component
    if comps.shape[1] < 3:
        comps = np.pad(comps, ((0, 0), (0, 3 - comps.shape[1])))
    lo, hi = comps.min(0), comps.max(0)
    comps = (comps - lo) / np.where(hi > lo, hi - lo, 1.0)
    return comps.reshape(n, g, g, 3)


def _source_image(row_path: str | None, thumb: np.ndarray | None, size: int) -> np.ndarray | None:
    """The source image (square-cropped like the pyramid) when readable here, else the stored thumbnail."""
    from raydino.pyramids.features import square_crop

    if row_path:
        p = Path(str(row_path).removeprefix("file://"))
        if p.is_file():
            try:
                with Image.open(p) as img:
                    return square_crop(img.convert("RGB"), size)
            except OSError:
                pass
    if thumb is None:
        return None
    return np.asarray(Image.fromarray(thumb).resize((size, size), Image.BICUBIC))


def section_pyramid(ctx: Context) -> str:
    from raydino.pyramids import schema

    pyr = ctx.inputs.pyramids
    if pyr is None or not (pyr / schema.MANIFEST).is_file():
        return _missing(f"No pyramid found ({pyr or 'none given; pass --pyramids'}).",
                        "raydino pyramids --images DIR --out PYRAMIDS")
    rows, levels = pyramid_rows(pyr, PCA_IMAGES)
    n = len(rows[schema.tokens_col(levels[0])])
    cells = ['<div class="rowlabel">image</div>']
    for i in range(n):
        img = _source_image(rows["path"][i] if "path" in rows else None,
                            rows[schema.THUMB][i] if schema.THUMB in rows else None, PCA_CELL)
        cells.append(ctx.assets.img(f"pyramid_image_{i}.png", img, f"image {i + 1}") if img is not None
                     else '<div class="empty">no image</div>')
    for li, size in enumerate(levels):
        rgb = pca_rgb(rows[schema.tokens_col(size)].astype(np.float32))
        g = rgb.shape[1]
        role = " · the coarse code" if li == 0 else ""
        cells.append(f'<div class="rowlabel">{size} px input<br><span>{g}×{g} tokens{role}</span></div>')
        for i in range(n):
            up = np.kron((rgb[i] * 255).round().astype(np.uint8), np.ones((PCA_CELL // g, PCA_CELL // g, 1), np.uint8))
            cells.append(ctx.assets.img(f"pyramid_{size}_{i}.png", up, f"PCA of level {size}, image {i + 1}"))
    grid = (f'<div class="pca" style="grid-template-columns:130px repeat({n},{PCA_CELL}px)">'
            f'{"".join(cells)}</div>')
    lead = ('What the generator is trained to match: each level\'s DINOv2 patch tokens, projected on their first '
            'three principal components (fitted per level across these images) and shown as RGB. The same colour '
            'means similar features; the coarsest level is the code the generator starts from.')
    return f'<p class="lead">{_esc(lead)}</p>{grid}<p class="small">From <code>{_esc(pyr)}</code>.</p>'


CHARTS = [  # title, tag pattern, note
    ("Training loss", r"loss/total", "The weighted sum being optimised (depends on the loss weights)."),
    ("Patch distance on training batches", r"loss/dist_\d+", "1 − cosine per level, unweighted, shifted inputs."),
    ("CLS distance on training batches", r"loss/cls_\d+", ""),
    ("Weighted level terms", r"loss/weighted_\d+", "What each level adds to the loss: w × (patch + cls_weight × CLS)."),
    ("Colour term", r"loss/color", "L1 against the thumbnail at low resolution."),
    ("Validation patch distance (EMA)", r"val/dist_(\d+|unweighted)",
     "Unweighted, on the fixed validation codes: comparable across loss weights. Dashed: baselines."),
    ("Gradient norm", r"train/grad_norm", "Before clipping."),
    ("Throughput", r"train/images_per_s", "Images per second, all workers together."),
    ("Fade-in alpha", r"train/alpha", "Share of the newest block while it fades in."),
    ("Learning rate", r"train/lr", ""),
]


def _stage_marks(cfg: Config | None) -> list[tuple[float, str]]:
    """The step at which each stage after the first begins."""
    if cfg is None:
        return []
    marks, step = [], 0
    for prev, stage in zip(cfg.train.stages, cfg.train.stages[1:], strict=False):
        step += prev.steps
        marks.append((float(step), f"{stage.resolution} px"))
    return marks


def section_curves(ctx: Context) -> str:
    scalars = {t: v for t, v in ctx.events.scalars.items()
               if not t.startswith("eval/") and len(v[0]) >= 2 and any(math.isfinite(y) for y in v[1])}
    if not scalars:
        return _missing(f"No TensorBoard scalars in {ctx.inputs.run / 'tb'}.")
    if all(v == 0 for v in scalars.get("train/bad_steps", ([], [0]))[1]):
        scalars.pop("train/bad_steps", None)  # all zero: said in the key figures
    groups: list[tuple[str, list[str], str]] = []
    left = set(scalars)
    for title, pattern, note in CHARTS:
        tags = sorted((t for t in left if re.fullmatch(pattern, t)), key=_tag_order)
        if tags:
            groups.append((title, tags, note))
            left -= set(tags)
    by_stem: dict[str, list[str]] = {}
    for t in sorted(left, key=_tag_order):
        by_stem.setdefault(re.sub(r"_\d+$", "", t), []).append(t)
    groups += [(stem, tags, "") for stem, tags in by_stem.items()]
    marks = _stage_marks(ctx.cfg) if len(ctx.cfg.train.stages if ctx.cfg else []) > 1 else []
    m = ctx.metrics or {}
    xmax = max(max(steps) for steps, _ in scalars.values())
    charts = []
    for title, tags, note in groups:
        series = [Series(_level_label(t) if len(tags) > 1 else t, *scalars[t], bold=t.endswith("unweighted"))
                  for t in tags]
        hlines = [(m[k], label) for k, label in (("step0/dist_unweighted", "untrained"),
                                                  ("mean_image/dist_unweighted", "mean image"))
                  if title.startswith("Validation") and k in m]
        charts.append(line_chart(title, series, note, marks=marks, hlines=hlines, xmax=xmax))
    return (f'<p class="lead">Read from <code>{_esc(ctx.inputs.run / "tb")}</code>; vertical lines mark the '
            f'start of each new stage. Open them live with <code>tensorboard --logdir '
            f'{_esc(ctx.inputs.run / "tb")}</code>.</p><div class="charts">{"".join(charts)}</div>')


def _tag_order(tag: str) -> tuple:
    m = re.search(r"_(\d+)$", tag)
    return (tag.rsplit("_", 1)[0] if m else tag, int(m.group(1)) if m else 1 << 30)


def section_tune(ctx: Context) -> str:
    sweep = ctx.inputs.sweep
    if sweep is None or not (sweep / "results.csv").is_file():
        return _missing(f"No Tune sweep ({sweep / 'results.csv' if sweep else 'none given; pass --sweep'}).",
                        "raydino tune --pyramids PYRAMIDS --out SWEEP")
    with open(sweep / "results.csv", newline="") as f:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        return _missing(f"{sweep / 'results.csv'} lists no trials.")
    best = _read_json(sweep / "best.json") or {}
    metric = best.get("metric") or next((k for k in rows[0] if k.startswith(("heldout/", "val/"))), "")
    best_id = best.get("best_trial", rows[0].get("trial_id") if rows else None)
    parts = []
    if best:
        parts.append(f'<p class="lead">{fmt(best.get("trials", len(rows)))} trials, '
                     f'{fmt(best.get("stopped_early", 0))} stopped early by ASHA. Judged by <code>{_esc(metric)}</code> '
                     + ("on held-out images under the evaluation encoder, at stage ends (no swept weight enters it)"
                        if metric.startswith("heldout/") else "on training rows (unweighted)")
                     + f'. Best among the trials that finished {fmt(best.get("best_stages_done", "all"))} stages: '
                     f'<b>{fmt(best.get("best_value"))}</b> (trial {_esc(best_id)}); its config is '
                     f'<code>{_esc(sweep / "best.yaml")}</code>.</p>')
        keys = list(best.get("best", {}))
        parts.append(_table(["weight", "default", "best"],
                            [[f"<code>{_esc(k)}</code>", fmt(best.get("default", {}).get(k)),
                              f'<b>{fmt(best["best"][k])}</b>'] for k in keys]))
    else:
        parts.append(_missing(f"No best.json in {sweep}; the table is the raw results.csv."))
    columns = [c for c in rows[0] if any(r[c] not in ("", None) for r in rows)] if rows else []
    table_rows = [[("★ " if r.get("trial_id") == best_id else "") + _esc(fmt(r[c])) if c == "trial_id"
                   else _esc(fmt(r[c])) for c in columns] for r in rows]
    parts.append("<h3>All trials</h3>" + _table([f"<code>{_esc(c)}</code>" for c in columns], table_rows,
                                                ["best" if r.get("trial_id") == best_id else "" for r in rows]))
    parts.append(_trial_curves(sweep, metric, best_id))
    return "".join(parts)


def _trial_curves(sweep: Path, metric: str, best_id: object) -> str:
    series = []
    for tb in sorted((sweep / "trials").glob("*/tb")):
        name = tb.parent.name
        steps, values = read_events(tb, images=False).scalars.get(metric, ([], []))
        if len(steps) >= 2:
            is_best = best_id is not None and (str(best_id) in name or name in str(best_id))
            series.append(Series(name + (" ★" if is_best else ""), steps, values, bold=is_best))
    if not series:
        return ""
    return f'<h3>Validation curve of each trial</h3><div class="charts">{line_chart(metric, series, "★: the best trial.")}</div>'


ATTRIBUTE_COLUMNS = [  # eval.json prefix, column title
    ("attributes/real", "real held-out images"), ("attributes/reconstructions", "reconstructions"),
    ("attributes/prompts", "prompt samples"), ("attributes/chance", "chance"), ("attributes/prior_tv", "prior: TV ↓"),
]


def section_attributes(ctx: Context) -> str:
    """Attribute agreement per attribute, next to the classifier's ceiling (real images) and chance."""
    ev = ctx.evaluation or {}
    if "attribute_classifier" not in ev:
        return _missing("No attribute agreement in eval.json: the run names no attribute classifier "
                        "(sample.attribute_classifier, written by raydino tiny-models).")
    if "attributes/note" in ev:
        return _missing(ev["attributes/note"])
    names = [k.split("/", 2)[2] for k in ev if k.startswith("attributes/real/")]
    columns = [(key, title) for key, title in ATTRIBUTE_COLUMNS if key in ev]
    rows = [[_esc(name)] + [fmt(ev.get(f"{key}/{name}")) for key, _ in columns] for name in names]
    rows.append(["<b>mean</b>"] + [f"<b>{fmt(ev[key])}</b>" for key, _ in columns])
    return ('<p class="lead">Accuracy of a classifier of the synthetic faces\' attributes, trained on real faces only: '
            'on the real held-out images (its ceiling), on their reconstructions (against the true attributes), on '
            'prompt samples (against what the prompt names); chance is always guessing the most frequent class. '
            'For prior samples: the total-variation distance between their attribute frequencies and the real ones. '
            'Speckle does not raise these figures, blur lowers them (docs/encoders.md).</p>'
            + _table(["attribute"] + [t for _, t in columns], rows)
            + f'<p class="small">Classifier <code>{_esc(ev["attribute_classifier"])}</code>; '
              f'{fmt(ev.get("n"))} held-out images.</p>')


def section_prior(ctx: Context) -> str:
    """The flow prior against the PCA baseline (FD, same floor), its training, and the hair-colour prompt test."""
    ev = ctx.evaluation or {}
    if "fd_dinov2/prior" not in ev:
        return _missing("No prior figures in eval.json: the run has no prior.",
                        "raydino train-prior --run RUN --pyramids PYRAMIDS, then raydino eval")
    rows = [[_esc(name), f"<b>{fmt(ev.get(key))}</b>"] for name, key in
            (("flow prior, K = " + fmt(ev.get("fd_dinov2/prior_steps")), "fd_dinov2/prior"),
             ("PCA Gaussian (baseline)", "fd_dinov2/prior_pca"), ("reconstructions", "fd_dinov2/reconstructions"),
             ("real vs real (floor)", "fd_dinov2/floor"))]
    parts = [f'<p class="lead">FD-DINOv2 (evaluation encoder) of {fmt(ev.get("fd_dinov2/n"))} unconditional samples '
             'of each prior against the same held-out half; the floor is two real halves at the same n.</p>',
             _table(["samples", "FD-DINOv2"], rows)]
    trained = _read_json(ctx.inputs.run / "prior.json")
    if trained:
        parts.append(f'<p class="small">Prior training: {fmt(trained.get("step"))} steps, '
                     f'{fmt(trained.get("codes_seen"))} codes, final loss <b>{fmt(trained.get("loss"))}</b>, '
                     f'{fmt(trained.get("time_s"))} s; curves in <code>tb/prior</code>.</p>')
    if "hair/accuracy" in ev:
        colours = [k.split("/")[1] for k in ev if k.startswith("hair/") and k.endswith("/distance")]
        table = [[f'“a face with {_esc(c)} hair”', _esc(ev[f"hair/{c}/sample_rgb"]), _esc(ev[f"hair/{c}/real_rgb"]),
                  fmt(ev[f"hair/{c}/real_n"]), fmt(ev[f"hair/{c}/distance"])] for c in colours]
        parts.append('<h3>Hair colour of prompt samples</h3><p class="lead">Mean RGB of the hair region of '
                     f'{fmt(ev["hair/n_per_prompt"])} samples per prompt, beside the held-out faces whose captions '
                     'name that colour. A sample counts as right when its hair colour is nearer to its prompt\'s real '
                     'mean than to the other two.</p>'
                     + _table(["prompt", "samples (RGB)", "real faces (RGB)", "real n", "distance"], table)
                     + f'<p class="small">Right colour: <b>{fmt(ev["hair/accuracy"])}</b> of the prompt samples '
                       f'(real faces: {fmt(ev["hair/accuracy_real"])}; chance: 0.3333).</p>')
    return "".join(parts)


def section_encoders(ctx: Context) -> str:
    """The linear probes of the tiny encoders (``probes.json`` beside each), once per report."""
    cfg = ctx.cfg
    if cfg is None:
        return _missing(f"No config.yaml in {ctx.inputs.run}.")
    found = [(role, Path(spec) / "probes.json") for role, spec in
             (("training encoder", cfg.pyramids.dino), ("FD encoder", cfg.sample.fd_encoder)) if spec]
    found = [(role, path) for role, path in found if path.is_file()]
    if not found:
        return _missing("No probes.json beside the encoders: they are not `raydino tiny-models` encoders "
                        "(pretrained weights are not probed here).")
    probes = [(role, json.loads(path.read_text())) for role, path in found]
    first = probes[0][1]
    keys = list(first["trained"])
    header = ["probe"] + [f"{_esc(role)}" for role, _ in probes] + ["random init", "majority class"]
    rows = [[_esc(k.replace("parts/", "patch parts, ").replace("attributes/", "CLS: "))]
            + [f"<b>{fmt(p['trained'][k])}</b>" for _, p in probes] + [fmt(first["random"][k]), fmt(first["majority"][k])]
            for k in keys]
    return (f'<p class="lead">Linear probes on {fmt(first["faces"])} held-out synthetic faces (half fit, half scored): '
            'the face part under each patch, per pyramid level (px), from the patch tokens; each attribute from the '
            'CLS token. The same probes on a randomly initialised encoder of the same shape, and the most frequent '
            'class, for reference.</p>' + _table(header, rows)
            + "".join(f'<p class="small">{_esc(role)}: <code>{_esc(p["encoder"])}</code></p>' for role, p in probes))


def section_run(ctx: Context) -> str:
    cfg = ctx.cfg
    if cfg is None:
        return _missing(f"No config.yaml in {ctx.inputs.run}.")
    stages = " → ".join(f"{s.resolution} px ({s.images} images)" for s in cfg.train.stages)
    rows = [("preset", cfg.preset), ("stages", stages),
            ("workers", f"{cfg.train.num_workers} × {'GPU' if cfg.train.use_gpu else 'CPU'}"),
            ("pyramid levels", ", ".join(f"{s} px" for s in cfg.pyramids.sizes)),
            ("DINOv2", cfg.pyramids.dino), ("CLIP", cfg.pyramids.clip or "none"),
            ("FD encoder", cfg.sample.fd_encoder or cfg.pyramids.dino),
            ("loss weights", ", ".join(fmt(w) for w in cfg.loss.level_weights) + f"; colour {fmt(cfg.loss.color_weight)}"),
            ("images", cfg.data.images or "synthetic faces (no --images)"), ("text control", describe_text(cfg))]
    facts = '<dl class="facts">' + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in rows) + "</dl>"
    return facts + unused_files(ctx)


def unused_files(ctx: Context, shown: int = 200) -> str:
    """The files of the run's images that no pyramid holds, each with its reason, from the pyramids' manifests.

    The training pyramid's manifest holds what could not be listed and what
    was ignored for the whole source; each side of the split holds its own
    decode failures. A user sees here which of their files were skipped and why.
    """
    root = ctx.inputs.run.parent.parent if ctx.inputs.run.parent.name == "runs" else None
    paths = [root / name / "manifest.json" for name in ("pyramids", "pyramids-val")] if root else []
    manifests = [(path, m) for path in paths if (m := _read_json(path)) is not None]
    if not manifests:
        return _missing("No pyramid in `raydino run`'s layout beside this run: its skipped files are listed in the "
                        "manifest.json of the pyramids it was trained and evaluated on.")
    failures = sorted({f["path"]: f for _, m in manifests for f in m.get("failures", [])}.values(),
                      key=lambda f: f["path"])
    ignored = manifests[0][1].get("ignored", {})
    counts = Counter(f["reason"].split(":", 1)[0] for f in failures)
    lead = (f'<p class="lead">{len(failures)} file{"" if len(failures) == 1 else "s"} of '
            f'<code>{_esc(manifests[0][1].get("source"))}</code> could not be used'
            + (f" ({_esc(', '.join(f'{k} {v}' for k, v in sorted(counts.items())))})" if counts else "") + "; "
            + (_esc(", ".join(f"{k} {v}" for k, v in sorted(ignored.items()))) or "no")
            + " other files were ignored (not images by their extension, hidden, or seen twice).</p>")
    rows = [[f"<code>{_esc(f['path'])}</code>", _esc(f["reason"])] for f in failures[:shown]]
    more = f'<p class="small">… and {len(failures) - shown} more.</p>' if len(failures) > shown else ""
    sources = ", ".join(f"<code>{_esc(path)}</code>" for path, _ in manifests)
    return (lead + (_table(["file", "why it was skipped"], rows) if rows else "") + more
            + f'<p class="small">From {sources}.</p>')


# --- the page --------------------------------------------------------------------------------


def _guarded(build: Callable[[], str]) -> str:
    try:
        return build()
    except Exception as exc:  # one unreadable input must not cost the whole page
        log.warning("report section failed: %s", exc, exc_info=True)
        return _missing(f"This section could not be built: {type(exc).__name__}: {exc}")


def write_report(run: str | Path, *, sweep: str | Path | None = None, pyramids: str | Path | None = None,
                 samples: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the report page of ``run`` and return its path."""
    inputs = find_inputs(run, sweep, pyramids, samples, out)
    inputs.out.parent.mkdir(parents=True, exist_ok=True)
    ctx = Context(inputs)
    sections = [
        ("figures", "Key figures", lambda: section_figures(ctx)),
        ("detail", "Detail: noise and sharpness", lambda: section_detail(ctx)),
        ("attributes", "Attribute agreement", lambda: section_attributes(ctx)),
        ("prior-figures", "The prior: flow against PCA, and prompts", lambda: section_prior(ctx)),
        ("stages", "Validation grids per stage", lambda: section_stages(ctx)),
        ("samples", "Samples", lambda: section_samples(ctx)),
        ("pyramid", "The feature pyramid", lambda: section_pyramid(ctx)),
        ("curves", "Training curves", lambda: section_curves(ctx)),
        ("tune", "Loss-weight sweep (Ray Tune)", lambda: section_tune(ctx)),
        ("encoders", "What the encoders see (probes)", lambda: section_encoders(ctx)),
        ("run", "Run", lambda: section_run(ctx)),
    ]
    body = "".join(f'<section id="{sid}"><h2>{_esc(title)}</h2>{_guarded(build)}</section>'
                   for sid, title, build in sections)
    nav = "".join(f'<a href="#{sid}">{_esc(title.split(" (")[0])}</a>' for sid, title, _ in sections)
    name = inputs.run.parent.parent.name if inputs.run.parent.name == "runs" else inputs.run.name
    page = PAGE.format(title=_esc(f"raydino · {name}"), name=_esc(name), run=_esc(inputs.run.resolve()),
                       when=time.strftime("%Y-%m-%d %H:%M"), nav=nav, body=body, css=CSS)
    inputs.out.write_text(page)
    return inputs.out


PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><style>{css}</style></head>
<body><header><div class="wrap"><h1>raydino report <span>{name}</span></h1>
<p>Run <code>{run}</code> · made {when}</p><nav>{nav}</nav></div></header>
<main class="wrap">{body}</main>
<footer class="wrap">Made by <code>raydino report</code>. Every figure has 4 significant digits.</footer>
</body></html>
"""

CSS = """
:root{--fg:#1f2533;--muted:#5f6878;--line:#e2e5eb;--bg:#f4f5f8;--card:#fff;--accent:#3b6fd8;--best:#fff3c4}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif}
.wrap{max-width:1180px;margin:0 auto;padding:0 24px}
header{background:#1f2533;color:#fff;padding:26px 0 16px}
header h1{margin:0;font-size:26px;font-weight:650}
header h1 span{color:#9fb6ea;font-weight:500}
header p{margin:4px 0 12px;color:#b9c1d0;font-size:13px}
header code{color:#dfe5f1;background:transparent}
nav{display:flex;flex-wrap:wrap;gap:4px 18px}
nav a{color:#cfd8ea;text-decoration:none;font-size:14px}
nav a:hover{color:#fff;text-decoration:underline}
section{background:var(--card);border:1px solid var(--line);border-radius:10px;padding:20px 24px;margin:20px 0}
h2{margin:0 0 10px;font-size:20px}
h3{margin:18px 0 6px;font-size:15px;color:var(--muted)}
.lead{margin:0 0 14px;color:var(--muted);max-width:860px}
.small,.note{color:var(--muted);font-size:13px;margin:8px 0}
code{font:12.5px/1.4 ui-monospace,"DejaVu Sans Mono",monospace;background:#eef0f4;padding:1px 4px;border-radius:4px;overflow-wrap:anywhere}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:12px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px;background:#fbfcfd}
.card .k{font-size:13px;color:var(--muted);font-weight:600}
.card .v{font-size:30px;font-weight:650;font-variant-numeric:tabular-nums;margin:2px 0}
.card .note{margin:0;font-size:12.5px}
.warn{color:#a33b1c;font-weight:600}
.missing{color:#7a5200;background:#fff8e6;border:1px solid #efd9a4;border-radius:6px;padding:9px 12px;margin:6px 0}
.img{overflow-x:auto}
img{max-width:100%;height:auto;display:block}
img.px{image-rendering:pixelated}
.strip{display:flex;flex-wrap:wrap;gap:10px}
.strip figure{margin:0}
figcaption{font-size:12px;color:var(--muted);margin-top:3px}
.pca{display:grid;gap:6px;align-items:center;overflow-x:auto}
.pca .rowlabel{font-size:13px;font-weight:600;line-height:1.25}
.pca .rowlabel span{font-weight:400;color:var(--muted);font-size:12px}
.pca img{width:96px;height:96px;border-radius:3px}
.scroll{overflow-x:auto}
table{border-collapse:collapse;font-size:13px;font-variant-numeric:tabular-nums;margin:6px 0}
th,td{padding:5px 12px;border-bottom:1px solid var(--line);text-align:right;white-space:nowrap}
th{font-weight:600;color:var(--muted);background:#f8f9fb}
th code{background:transparent;padding:0}
td:first-child,th:first-child{text-align:left}
tr.best td{background:var(--best);font-weight:650}
.prompt{white-space:normal}
.up{color:#1f7a4d;font-weight:600}
.down{color:#a33b1c;font-weight:600}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:18px 22px}
.chart{margin:0}
.chart figcaption{font-size:13.5px;font-weight:600;color:var(--fg);margin:0 0 4px}
.chart svg{width:100%;height:auto;display:block}
.chart .plot{fill:#fbfcfd;stroke:var(--line)}
.chart .grid{stroke:#e9ecf1}
.chart .tick{font-size:11px;fill:#5f6878}
.chart .mark{stroke:#9aa3b2;stroke-dasharray:3 3}
.chart .base{stroke:#a33b1c;stroke-dasharray:5 4;opacity:.7}
.chart .marklabel{font-size:10.5px;fill:#5f6878}
.legend{display:flex;flex-wrap:wrap;gap:2px 12px;font-size:12px;color:var(--muted)}
.legend i{display:inline-block;width:10px;height:10px;border-radius:2px;margin-right:4px;vertical-align:-1px}
.legend b{color:var(--fg);font-weight:600}
.chart .note{margin:2px 0 0;font-size:12px}
dl.facts{display:grid;grid-template-columns:160px 1fr;gap:4px 16px;margin:0;font-size:14px}
dl.facts dt{color:var(--muted)}
dl.facts dd{margin:0;overflow-wrap:anywhere}
footer{color:var(--muted);font-size:12px;padding:8px 24px 40px}
"""
