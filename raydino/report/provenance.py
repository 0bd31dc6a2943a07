"""Sections of what the run was made from: its config, what its encoders see, the source files it could not use."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from raydino.data.captions import describe_text
from raydino.layout import Output, read_json
from raydino.models.tiny import PROBES
from raydino.pyramids import schema
from raydino.report.inputs import Context
from raydino.report.markup import esc, fmt, missing, table


def section_encoders(ctx: Context) -> str:
    """The linear probes of the tiny encoders (written beside each), once per report."""
    cfg = ctx.cfg
    if cfg is None:
        return missing(f"No {ctx.run.config.name} in {ctx.run.path}.")
    found = [(role, Path(spec) / PROBES) for role, spec in
             (("training encoder", cfg.pyramids.dino), ("FD encoder", cfg.eval.fd_encoder)) if spec]
    found = [(role, path) for role, path in found if path.is_file()]
    if not found:
        return missing(f"No {PROBES} beside the encoders: they are not `raydino tiny-models` encoders "
                       "(pretrained weights are not probed here).")
    probes = [(role, json.loads(path.read_text())) for role, path in found]
    first = probes[0][1]
    keys = list(first["trained"])
    header = ["probe"] + [f"{esc(role)}" for role, _ in probes] + ["random init", "majority class"]
    rows = [[esc(k.replace("parts/", "patch parts, ").replace("attributes/", "CLS: "))]
            + [f"<b>{fmt(p['trained'][k])}</b>" for _, p in probes] + [fmt(first["random"][k]), fmt(first["majority"][k])]
            for k in keys]
    return (f'<p class="lead">Linear probes on {fmt(first["faces"])} held-out synthetic faces (half fit, half scored): '
            'the face part under each patch, per pyramid level (px), from the patch tokens; each attribute from the '
            'CLS token. The same probes on a randomly initialised encoder of the same shape, and the most frequent '
            'class, for reference.</p>' + table(header, rows)
            + "".join(f'<p class="small">{esc(role)}: <code>{esc(p["encoder"])}</code></p>' for role, p in probes))


def section_run(ctx: Context) -> str:
    cfg = ctx.cfg
    if cfg is None:
        return missing(f"No {ctx.run.config.name} in {ctx.run.path}.")
    stages = " → ".join(f"{s.resolution} px ({s.images} images)" for s in cfg.train.stages)
    rows = [("preset", cfg.preset), ("stages", stages),
            ("workers", f"{cfg.train.num_workers} × {'GPU' if cfg.train.use_gpu else 'CPU'}"),
            ("pyramid levels", ", ".join(f"{s} px" for s in cfg.pyramids.sizes)),
            ("DINOv2", cfg.pyramids.dino), ("CLIP", cfg.pyramids.clip or "none"),
            ("FD encoder", cfg.eval.fd_encoder or cfg.pyramids.dino),
            ("loss weights", ", ".join(fmt(w) for w in cfg.loss.level_weights) + f"; colour {fmt(cfg.loss.color_weight)}"),
            ("images", cfg.data.images or "synthetic faces (no --images)"), ("text control", describe_text(cfg))]
    facts = '<dl class="facts">' + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows) + "</dl>"
    return facts + fitted_sizes(ctx) + unused_files(ctx)


def fitted_sizes(ctx: Context) -> str:
    """The sizes ``raydino run`` lowered because the data could not fill them (:mod:`raydino.data_fit`)."""
    root = Output.of(ctx.run.path)
    fitted = read_json(root.fitted) if root else None
    if not fitted or not fitted["changes"]:
        return ""
    return (f'<p class="lead">The data could not fill every size the preset asks for ({fitted["training_rows"]} '
            f'training rows, {fitted["held_out_rows"]} held-out rows), so the run used smaller ones:</p><ul>'
            + "".join(f"<li>{esc(note)}</li>" for note in fitted["changes"]) + "</ul>")


def unused_files(ctx: Context, shown: int = 200) -> str:
    """The files of the run's images that no pyramid holds, each with its reason, from the pyramids' manifests.

    The training pyramid's manifest holds what could not be listed and what
    was ignored for the whole source; each side of the split holds its own
    decode failures. A user sees here which of their files were skipped and why.
    """
    root = Output.of(ctx.run.path)
    paths = [schema.manifest_path(pyramid) for pyramid in (root.pyramids, root.pyramids_val)] if root else []
    manifests = [(path, m) for path in paths if (m := read_json(path)) is not None]
    if not manifests:
        return missing("No pyramid in `raydino run`'s layout beside this run: its skipped files are listed in the "
                       f"{schema.MANIFEST} of the pyramids it was trained and evaluated on.")
    failures = sorted({f["path"]: f for _, m in manifests for f in m.get("failures", [])}.values(),
                      key=lambda f: f["path"])
    ignored = manifests[0][1].get("ignored", {})
    counts = Counter(f["reason"].split(":", 1)[0] for f in failures)
    lead = (f'<p class="lead">{len(failures)} file{"" if len(failures) == 1 else "s"} of '
            f'<code>{esc(manifests[0][1].get("source"))}</code> could not be used'
            + (f" ({esc(', '.join(f'{k} {v}' for k, v in sorted(counts.items())))})" if counts else "") + "; "
            + (esc(", ".join(f"{k} {v}" for k, v in sorted(ignored.items()))) or "no")
            + " other files were ignored (not images by their extension, hidden, or seen twice).</p>")
    rows = [[f"<code>{esc(f['path'])}</code>", esc(f["reason"])] for f in failures[:shown]]
    more = f'<p class="small">… and {len(failures) - shown} more.</p>' if len(failures) > shown else ""
    sources = ", ".join(f"<code>{esc(path)}</code>" for path, _ in manifests)
    return (lead + (table(["file", "why it was skipped"], rows) if rows else "") + more
            + f'<p class="small">From {sources}.</p>')
