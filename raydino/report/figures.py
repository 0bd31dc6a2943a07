"""Sections of the run's evaluation figures: key figures, detail, attributes, parts, the prior, text control.

Every figure comes with what it means and which way is better, since the
page is read by people who did not write the evaluation.
"""

from __future__ import annotations

import re

from raydino.layout import Output, Samples, read_json
from raydino.report.inputs import Context
from raydino.report.markup import esc, fmt, missing, table

FIGURES = [  # evaluation key, title, what it means
    ("fd_dinov2/reconstructions", "FD-DINOv2, reconstructions",
     "Fréchet distance between reconstructions of one half of the held-out images and the other half, in the "
     "CLS space of the evaluation encoder. Lower is better; the floor is two halves of real images."),
    ("fd_dinov2/prior", "FD-DINOv2, flow prior samples",
     "The same distance for unconditional samples of the flow-matching prior over the coarse code."),
    ("fd_dinov2/prior_pca", "FD-DINOv2, PCA Gaussian prior (baseline)",
     "The same distance for samples of the Gaussian in PCA space, against the same real half."),
    ("prior/memorisation/ratio", "Memorisation ratio, flow prior",
     "Median distance of each flow-prior sample's code to its nearest training code, over the same for held-out "
     "real faces' codes. Near 0: the prior returns its training codes; about 1 or more: its samples are as far "
     "from the training set as new faces are."),
    ("prior/memorisation/near_copies", "Near-copies, flow prior",
     "Share of prior samples nearer to a training code than 95% of held-out codes are (5% if it does not copy)."),
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
DETAIL_FIGURES = [  # evaluation key, title, which way is better
    ("noise_spread", "noise spread (8 draws per code / across images)", "higher: the noise carries detail"),
    ("sharpness_ratio", "sharpness ratio (Laplacian variance, generated / real)", "closer to 1"),
    ("fd_dinov2/reconstructions", "FD-DINOv2, reconstructions (evaluation encoder)", "lower"),
    ("train_encoder/dist_unweighted", "patch distance, training encoder (mean of levels)", "lower"),
]
ATTRIBUTE_COLUMNS = [  # evaluation key prefix, column title
    ("attributes/real", "real held-out images"), ("attributes/reconstructions", "reconstructions"),
    ("attributes/prompts", "prompt samples"), ("attributes/chance", "chance"), ("attributes/prior_tv", "prior: TV ↓"),
]


def section_figures(ctx: Context) -> str:
    ev, m = ctx.evaluation, ctx.metrics
    parts = []
    if ev is None:
        parts.append(missing(f"No {ctx.run.eval.name} in {ctx.run.path}.", "raydino eval --run RUN --pyramids HELD_OUT"))
    else:
        def floor(key: str) -> str:
            if not key.startswith("fd_dinov2/") or "fd_dinov2/floor" not in ev:
                return ""
            return (f'<div class="note">floor (real vs real) <b>{fmt(ev["fd_dinov2/floor"])}</b> '
                    f'at n = {fmt(ev.get("fd_dinov2/n"))}</div>')

        cards = [f'<div class="card"><div class="k">{esc(title)}</div><div class="v">{fmt(ev[key])}</div>'
                 f'{floor(key)}<div class="note">{esc(note)}</div></div>' for key, title, note in FIGURES if key in ev]
        if "set" in ev:
            parts.append(f'<p class="small">Computed on: <b>{esc(ev["set"])}</b>; {fmt(ev.get("n"))} images at '
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
        parts.append(f'<p class="small">Encoders: training <code>{esc(ev.get("training_encoder", "?"))}</code>; '
                     f'evaluation (FD) <code>{esc(judge or "?")}</code>.{warn}</p>')
    if m is None:
        parts.append(missing(f"No {ctx.run.metrics.name} in {ctx.run.path}: training has not finished.",
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
            parts.append(f'<p class="small">At the end of training, on {esc(m.get("heldout_set", "held-out images"))}'
                         f': heldout/eval_dist <b>{fmt(m["heldout/eval_dist"])}</b> (step 0: '
                         f'{fmt(m.get("step0/heldout_eval_dist"))}), evaluation encoder.</p>')
    return "".join(parts)


def section_detail(ctx: Context) -> str:
    """Does the noise carry detail? The run's figures beside its comparison run's, and both runs' noise draws."""
    ev = ctx.evaluation
    if ev is None or "noise_spread" not in ev:
        return missing(f"No noise_spread in {ctx.run.eval.name}.", "raydino eval --run RUN --pyramids HELD_OUT")
    kind = ctx.cfg.loss.kind if ctx.cfg else "?"
    root = Output.of(ctx.run.path)
    compared = [run for run in (root.runs()[1:] if root else []) if run.eval.is_file()]
    columns = [(f"this run (loss.kind={kind})", ev)]
    columns += [(f"comparison (loss.kind={run.path.name.removeprefix(Output.COMPARE)})", read_json(run.eval))
                for run in compared]
    rows = []
    for key, title, better in DETAIL_FIGURES:
        cells = [fmt(col.get(key)) if key in col else "–" for _, col in columns]
        other = columns[1][1] if len(columns) > 1 else {}
        if key in other and ev.get(key):
            cells.append(f"{other[key] / ev[key]:.2f}×")
        elif other:
            cells.append("–")
        rows.append([esc(title), *cells, esc(better)])
    header = ["figure", *[name for name, _ in columns]] + (["comparison / this run"] if len(columns) > 1 else []) + ["better"]
    floor = (f'FD floor (real vs real) {fmt(ev["fd_dinov2/floor"])} at n = {fmt(ev.get("fd_dinov2/n"))}; '
             if "fd_dinov2/floor" in ev else "")
    parts = [f'<p class="lead">A generator that averages the details its coarse code leaves open ignores its noise '
             f'(spread near 0) and blurs (sharpness well below 1). Noise spread: {fmt(ev.get("noise_spread/draws"))} '
             f'draws for each of {fmt(ev.get("noise_spread/codes"))} held-out codes; sharpness over '
             f'{fmt(ev.get("sharpness_ratio/n"))} reconstructions; {floor}all at {fmt(ev.get("resolution"))} px.</p>',
             table(header, rows)]
    folder = ctx.inputs.samples
    for filename, title in ((Samples.NOISE, f"this run (loss.kind={kind})"), (Samples.NOISE_COMPARE, columns[-1][0])):
        path = folder / filename if folder else None
        if path and path.is_file() and (filename == Samples.NOISE or len(columns) > 1):
            parts.append(f'<h3>Noise draws, {esc(title)}</h3><p class="small">Each row: a held-out image, then 8 '
                         'draws for its one coarse code.</p>'
                         f'<div class="img">{ctx.assets.img(filename, path, title)}</div>')
    return "".join(parts)


def section_attributes(ctx: Context) -> str:
    """Attribute agreement per attribute, next to the classifier's ceiling (real images) and chance."""
    ev = ctx.evaluation or {}
    if "attribute_classifier" not in ev:
        return missing(f"No attribute agreement in {ctx.run.eval.name}: the run names no attribute classifier "
                       "(eval.attribute_classifier, written by raydino tiny-models).")
    if "attributes/note" in ev:
        return missing(ev["attributes/note"])
    names = [k.split("/", 2)[2] for k in ev if k.startswith("attributes/real/")]
    columns = [(key, title) for key, title in ATTRIBUTE_COLUMNS if key in ev]
    rows = [[esc(name)] + [fmt(ev.get(f"{key}/{name}")) for key, _ in columns] for name in names]
    rows.append(["<b>mean</b>"] + [f"<b>{fmt(ev[key])}</b>" for key, _ in columns])
    return ('<p class="lead">Accuracy of a classifier of the synthetic faces\' attributes, trained on real faces only: '
            'on the real held-out images (its ceiling), on their reconstructions (against the true attributes), on '
            'prompt samples (against what the prompt names); chance is always guessing the most frequent class. '
            'For prior samples: the total-variation distance between their attribute frequencies and the real ones. '
            'Speckle does not raise these figures, blur lowers them (docs/encoders.md).</p>'
            + table(["attribute"] + [t for _, t in columns], rows)
            + f'<p class="small">Classifier <code>{esc(ev["attribute_classifier"])}</code>; '
              f'{fmt(ev.get("n"))} held-out images.</p>')


def section_parts(ctx: Context) -> str:
    """Whether eyes, mouth and glasses are drawn (``raydino.evaluation.part_figures``), beside the real faces' figures and n."""
    ev = ctx.evaluation or {}
    if "parts/note" in ev:
        return missing(ev["parts/note"])
    if "parts/n" not in ev:
        return missing(f"No parts figures in {ctx.run.eval.name}.", "raydino eval --run RUN --pyramids HELD_OUT")
    n = ev["parts/n"]
    rows = [[esc(title), fmt(ev.get(f"parts/reconstructions/error_ratio{key}")),
             fmt(ev.get(f"parts/reconstructions/iou{key}")), fmt(ev.get(f"parts/real/iou{key}")),
             fmt(ev["parts/n/glasses"] if key == "/glasses" else n)]
            for key, title in (("/eyes", "eyes"), ("/mouth", "mouth"), ("/glasses", "glasses"), ("", "all three"))]
    found = [[esc(title), f'<b>{fmt(ev[f"parts/{key}/found"])}</b>', fmt(ev.get("parts/real/found")),
              fmt(ev.get(f"parts/{key}/n", n))]
             for key, title in (("reconstructions", "reconstructions"), ("prior", "prior samples"),
                                ("prompts", "prompt samples")) if f"parts/{key}/found" in ev]
    parts = ['<p class="lead">Reconstructions of the held-out faces, inside each part\'s mask: the error ratio is '
             'their mean absolute error there over that of the same face drawn without eyes, mouth and glasses (real '
             'faces 0, parts left out 1; lower is better; blur and speckle score high, docs/judgement.md). IoU: '
             'the parts a segmenter trained on real faces finds, against the true part map; on real faces it is the '
             'ceiling. Mean IoU of the three in the last row.</p>',
             table(["part", "error ratio ↓", "IoU, reconstructions", "IoU, real faces (ceiling)", "n"], rows)]
    if found:
        parts.append('<p class="lead">Share of images in which the segmenter finds two eyes (one on each side of the '
                     'face\'s midline) and a mouth: what can be asked of samples that have no target.</p>'
                     + table(["images", "found", "real faces (ceiling)", "n"], found))
    if "part_segmenter" in ev:
        parts.append(f'<p class="small">Segmenter <code>{esc(ev["part_segmenter"])}</code>; all at '
                     f'{fmt(ev.get("resolution"))} px.</p>')
    return "".join(parts)


def section_prior(ctx: Context) -> str:
    """The flow prior against the PCA baseline (FD, same floor), and its training."""
    ev = ctx.evaluation or {}
    if "fd_dinov2/prior" not in ev:
        return missing(f"No prior figures in {ctx.run.eval.name}: the run has no prior.",
                       "raydino train-prior --run RUN --pyramids PYRAMIDS, then raydino eval")
    kind = f" ({ev['fd_dinov2/prior_kind']})" if "fd_dinov2/prior_kind" in ev else ""  # student or teacher
    rows = [[esc(name), f"<b>{fmt(ev.get(key))}</b>"] for name, key in
            ((f"flow prior{kind}, K = " + fmt(ev.get("fd_dinov2/prior_steps")), "fd_dinov2/prior"),
             ("PCA Gaussian (baseline)", "fd_dinov2/prior_pca"), ("reconstructions", "fd_dinov2/reconstructions"),
             ("real vs real (floor)", "fd_dinov2/floor"))]
    parts = [f'<p class="lead">FD-DINOv2 (evaluation encoder) of {fmt(ev.get("fd_dinov2/n"))} unconditional samples '
             'of each prior against the same held-out half; the floor is two real halves at the same n.</p>',
             table(["samples", "FD-DINOv2"], rows)]
    trained = read_json(ctx.run.prior_figures)
    if trained:
        parts.append(f'<p class="small">Prior training: {fmt(trained.get("step"))} steps, '
                     f'{fmt(trained.get("codes_seen"))} codes, final loss <b>{fmt(trained.get("loss"))}</b>, '
                     f'{fmt(trained.get("time_s"))} s; curves in '
                     f'<code>{esc(ctx.run.tb_prior.relative_to(ctx.run.path))}</code>.</p>')
    return "".join(parts)
