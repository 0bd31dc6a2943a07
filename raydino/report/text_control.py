"""The report's text-control section: prompt samples per attribute beside their references, the flip test,
the guidance curve and text-guided edits (``text_control/*``, ``text_encoder/flip/*`` of ``eval.json``)."""

from __future__ import annotations

from raydino.report.inputs import Context
from raydino.report.markup import esc, fmt, missing, table

TEXT_CONTROL_ATTRIBUTES = [  # what text_control/* and text_encoder/flip/* measure, as the page names them
    ("hair_colour", "hair colour"), ("hair_style", "hair style"), ("glasses", "glasses"), ("smile", "smile"),
]
TEXT_CONTROL_ROWS = [  # key under text_control/, row title, what the row is; prompt samples first, then references
    ("caption_words", "prompts in the captions' words", "“a face with red hair”: samples showing the named value"),
    ("user_words", "prompts in a user's words", "“someone with red hair”: words no caption uses"),
    ("full_captions", "full captions", "held-out faces' whole captions, all four attributes named at once"),
    ("reconstructions", "reconstructions", "held-out faces through the generator: the ceiling"),
    ("oracle", "oracle conditioning", "the prior given each held-out face's own condition"),
    ("unconditional", "unconditional samples", "how often samples show the value unasked"),
    ("chance", "chance", "one over the number of values"),
]
PROMPT_ROWS = 3  # the first rows of TEXT_CONTROL_ROWS are prompt samples; the rest are references


def _labelled(title: str, what: str) -> str:
    """A row's title with what the row is, in one short phrase under it."""
    return f'{esc(title)}<div class="what">{esc(what)}</div>'


def section_text_control(ctx: Context) -> str:
    """Does a prompt's sample show what it names? Per attribute beside its references; the text encoder's flip test,
    the guidance curve and text-guided edits (``raydino.evaluation.text_control``, ``raydino.evaluation.text_encoder``)."""
    ev = ctx.evaluation or {}
    names = [name for name, _ in TEXT_CONTROL_ATTRIBUTES]
    header = [title for _, title in TEXT_CONTROL_ATTRIBUTES]

    def per_attribute(prefix: str, bold: bool = False) -> list[str]:
        cells = [fmt(ev.get(f"{prefix}/{name}")) for name in names] + [fmt(ev.get(prefix))]
        return [f"<b>{c}</b>" for c in cells] if bold else cells

    parts = []
    rows = [(i, key, title, what) for i, (key, title, what) in enumerate(TEXT_CONTROL_ROWS)
            if f"text_control/{key}" in ev]
    if rows:
        parts.append(
            f'<p class="lead">Does a sample show what its prompt names? Every value of hair colour, hair style, glasses '
            f'and smile has a prompt naming it alone, in two wordings; {fmt(ev.get("text_control/n_per_prompt"))} '
            f'samples per prompt at the prior\'s guidance {fmt(ev.get("text_control/guidance"))}, read by the run\'s '
            'attribute classifier. A cell: the share of samples showing the named value, averaged over the '
            'attribute\'s values (higher is better). Below the prompts, references on the same classifier '
            '(docs/tune-eval-sample.md).</p>'
            + table(["figure", *header, "mean"],
                    [[_labelled(title, what), *per_attribute(f"text_control/{key}", bold=i < PROMPT_ROWS)]
                     for i, key, title, what in rows],
                    ["" if i < PROMPT_ROWS else "ref" for i, _, _, _ in rows]))
        prompts = ev.get("text_control/prompts") or {}
        lists = [(title, prompts.get(key)) for key, title, _ in TEXT_CONTROL_ROWS[:2]]
        lists.append(("full captions", ev.get("text_control/full_captions/prompts")))
        items = "".join(f"<p>{esc(title)}: " + ", ".join(f"“{esc(p)}”" for p in listed) + "</p>"
                        for title, listed in lists if listed)
        if items:
            parts.append(f'<details class="small"><summary>The prompts</summary>{items}</details>')
        if "attribute_classifier" in ev:
            parts.append(f'<p class="small">Classifier <code>{esc(ev["attribute_classifier"])}</code>.</p>')
    if any(f"text_encoder/flip/{name}" in ev for name in names):
        parts.append(
            '<h3>Does the text encoder carry the word? (flip test)</h3><p class="lead">A prior can only obey a word '
            f'its condition carries. For each of {fmt(ev.get("text_encoder/flip/n"))} held-out faces, CLIP compares '
            'the face\'s image with its caption and with the same caption with one attribute changed.</p>'
            + table(["text encoder", *header],
                    [[_labelled("nearer the true caption", "share of faces; chance 0.5"),
                      *[fmt(ev.get(f"text_encoder/flip/{name}")) for name in names]],
                     [_labelled("mean margin", "cosine, true minus changed; 0: the word is lost"),
                      *[fmt(ev.get(f"text_encoder/flip/{name}/margin")) for name in names]]]))
    curve = ev.get("text_control/curve") or []
    if curve:
        guidance = ev.get("text_control/guidance")
        floor = ", ".join(f"{label} <b>{fmt(ev[key])}</b>" for key, label in
                          (("fd_dinov2/prior", "unconditional flow prior"), ("fd_dinov2/floor", "real vs real (floor)"))
                          if key in ev)
        parts.append(
            '<h3>Guidance: obeying against looking real</h3><p class="lead">Text control at several guidance scales '
            '(mean share over the four attributes), for prompts in a user\'s words and for oracle conditioning, '
            'and FD-DINOv2 (evaluation encoder, lower is better) of the oracle-conditioned samples against the real '
            'held-out half.</p>'
            + table(["guidance", "prompts in a user's words", "oracle conditioning", "FD-DINOv2, oracle samples"],
                    [[fmt(p.get("guidance")) + (" (the run's)" if p.get("guidance") == guidance else ""),
                      fmt(p.get("user_words")), fmt(p.get("oracle")), fmt(p.get("fd_dinov2"))] for p in curve])
            + (f'<p class="small">FD for comparison: {floor}.</p>' if floor else ""))
    if "text_control/edits/asked" in ev:
        t = ev.get("text_control/edits/t")
        points = list(ev.get("text_control/edits/curve") or [])
        if t is not None and all(p.get("t") != t for p in points):
            points.append({"t": t, "asked": ev["text_control/edits/asked"], "kept": ev.get("text_control/edits/kept")})
        points.sort(key=lambda p: p.get("t") or 0.0)
        parts.append(
            f'<h3>Text-guided edits at T = {fmt(t)}</h3><p class="lead">{fmt(ev.get("text_control/edits/faces"))} '
            'held-out faces, each edited once per attribute toward a value it does not have: its coarse code noised '
            f'to flow time T = {fmt(t)} (<code>sample.edit_t</code>) and integrated back by the prior under a prompt '
            'in a user\'s words naming the new value. Higher is better on both rows.</p>'
            + table([f"edits at T = {fmt(t)}", *header, "mean"],
                    [[_labelled("asked value shown", "share of edits showing the value asked for"),
                      *per_attribute("text_control/edits/asked", bold=True)],
                     [_labelled("other attributes kept", "share of the face's other attributes unchanged"),
                      *per_attribute("text_control/edits/kept")]]))
        if len(points) > 1:
            parts.append('<p class="small">Over T (mean of the four attributes): lower T keeps more of the face, '
                         'higher T obeys the prompt more.</p>'
                         + table(["T", "asked value shown", "other attributes kept"],
                                 [[fmt(p.get("t")) + (" (sample.edit_t)" if p.get("t") == t else ""),
                                   fmt(p.get("asked")), fmt(p.get("kept"))] for p in points]))
    if not parts:
        return missing(f"No text-control figures in {ctx.run.eval.name}: they need a prior conditioned on CLIP, an "
                       "attribute classifier (eval.attribute_classifier) and synthetic held-out faces.",
                       "raydino eval --run RUN --pyramids HELD_OUT")
    return "".join(parts)
