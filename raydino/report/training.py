"""Sections of how training went: the TensorBoard curves of the run, and the Tune sweep's trials."""

from __future__ import annotations

import csv
import math
import re

from raydino.config import Config
from raydino.layout import Sweep, read_json
from raydino.report.charts import Series, line_chart
from raydino.report.inputs import Context, read_events
from raydino.report.markup import esc, fmt, missing, table

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


def _level_label(tag: str) -> str:
    """``val/dist_56`` -> ``56 px``; ``val/dist_unweighted`` -> ``mean of levels``."""
    name = tag.rsplit("/", 1)[-1]
    if m := re.search(r"_(\d+)$", name):
        return f"{m.group(1)} px"
    return "mean of levels" if name.endswith("unweighted") else name


def _tag_order(tag: str) -> tuple:
    """Levels in numeric order (56 before 112), a tag without a level after them."""
    m = re.search(r"_(\d+)$", tag)
    return (tag.rsplit("_", 1)[0] if m else tag, int(m.group(1)) if m else 1 << 30)


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
        return missing(f"No TensorBoard scalars in {ctx.run.tb}.")
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
    return (f'<p class="lead">Read from <code>{esc(ctx.run.tb)}</code>; vertical lines mark the '
            f'start of each new stage. Open them live with <code>tensorboard --logdir '
            f'{esc(ctx.run.tb)}</code>.</p><div class="charts">{"".join(charts)}</div>')


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


def section_tune(ctx: Context) -> str:
    sweep = Sweep(ctx.inputs.sweep) if ctx.inputs.sweep else None
    if sweep is None or not sweep.results.is_file():
        return missing(f"No Tune sweep ({sweep.results if sweep else 'none given; pass --sweep'}).",
                       "raydino tune --pyramids PYRAMIDS --out SWEEP")
    with open(sweep.results, newline="") as f:
        rows = [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(f)]
    if not rows:
        return missing(f"{sweep.results} lists no trials.")
    best = read_json(sweep.best) or {}
    metric = best.get("metric") or next((k for k in rows[0] if k.startswith(("heldout/", "val/"))), "")
    best_id = best.get("best_trial", rows[0].get("trial_id") if rows else None)
    parts = []
    if best:
        parts.append(f'<p class="lead">{fmt(best.get("trials", len(rows)))} trials, '
                     f'{fmt(best.get("stopped_early", 0))} stopped early by ASHA. Judged by <code>{esc(metric)}</code> '
                     + ("on held-out images under the evaluation encoder, at stage ends (no swept weight enters it)"
                        if metric.startswith("heldout/") else "on training rows (unweighted)")
                     + f'. Best among the trials that finished {fmt(best.get("best_stages_done", "all"))} stages: '
                     f'<b>{fmt(best.get("best_value"))}</b> (trial {esc(best_id)}); its config is '
                     f'<code>{esc(sweep.best_config)}</code>.</p>')
        keys = list(best.get("best", {}))
        parts.append(table(["weight", "default", "best"],
                           [[f"<code>{esc(k)}</code>", fmt(best.get("default", {}).get(k)),
                             f'<b>{fmt(best["best"][k])}</b>'] for k in keys]))
    else:
        parts.append(missing(f"No {sweep.best.name} in {sweep.path}; the table is the raw {sweep.results.name}."))
    columns = [c for c in rows[0] if any(r[c] not in ("", None) for r in rows)] if rows else []
    table_rows = [[("★ " if r.get("trial_id") == best_id else "") + esc(fmt(r[c])) if c == "trial_id"
                   else esc(fmt(r[c])) for c in columns] for r in rows]
    parts.append("<h3>All trials</h3>" + table([f"<code>{esc(c)}</code>" for c in columns], table_rows,
                                               ["best" if r.get("trial_id") == best_id else "" for r in rows]))
    parts.append(_trial_curves(sweep, metric, best_id))
    return "".join(parts)


def _trial_curves(sweep: Sweep, metric: str, best_id: object) -> str:
    series = []
    for trial in sorted(sweep.trials.glob("*")):
        tb = sweep.trial(trial.name).tb
        if not tb.exists():
            continue
        steps, values = read_events(tb, images=False).scalars.get(metric, ([], []))
        if len(steps) >= 2:
            is_best = best_id is not None and (str(best_id) in trial.name or trial.name in str(best_id))
            series.append(Series(trial.name + (" ★" if is_best else ""), steps, values, bold=is_best))
    if not series:
        return ""
    return f'<h3>Validation curve of each trial</h3><div class="charts">{line_chart(metric, series, "★: the best trial.")}</div>'
