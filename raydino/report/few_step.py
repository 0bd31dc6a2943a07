"""The report's one-step section: the distilled student beside its teacher (``few_step`` of ``eval.json``)."""

from __future__ import annotations

from raydino.layout import read_json
from raydino.report.inputs import Context
from raydino.report.markup import esc, fmt, missing, table
from raydino.report.text_control import TEXT_CONTROL_ATTRIBUTES


def section_few_step(ctx: Context) -> str:
    """FD, oracle agreement and user-words text control for the teacher at its K and the student at 1, 2 and 4
    evaluations (``raydino.evaluation.few_step``), with what the distillation cost."""
    rows = (ctx.evaluation or {}).get("few_step") or []
    if not rows:
        return missing("No student: the run's prior samples in its own K guided steps.",
                       "raydino distill-prior --run RUN --pyramids PYRAMIDS distill.steps=600")
    names = [name for name, _ in TEXT_CONTROL_ATTRIBUTES]
    body = [[f"<b>{esc(r['prior'])}</b>", fmt(r["steps"]), fmt(r["evaluations"]), fmt(r["fd_dinov2"]),
             fmt(r["fd_dinov2/oracle"]), fmt(r["oracle"]), *[fmt(r.get(f"user_words/{n}")) for n in names],
             fmt(r.get("user_words"))] for r in rows]
    header = ["prior", "K", "evaluations per code", "FD, unconditional", "FD, oracle", "oracle agreement",
              *[f"user words: {title}" for _, title in TEXT_CONTROL_ATTRIBUTES], "user words: mean"]
    made = read_json(ctx.run.student_figures) or {}
    cost = (f'<p class="small">Distilled from {fmt(made.get("pairs"))} teacher pairs ({esc(str(made.get("teacher")))}, '
            f'guidance drawn from {esc(str(made.get("guidance")))}) in {fmt(made.get("step"))} steps; '
            f'{fmt(made.get("pairs_time_s"))} s for the pairs, {fmt(made.get("time_s"))} s in all.</p>') if made else ""
    return ('<p class="lead">The prior distilled into a student that takes the guidance scale as an input: one '
            'network evaluation per code where its teacher takes a conditional and a null one per Heun stage. The '
            'same noise in every row; FD (lower is better) against the held-out faces, the oracle conditioned on '
            'their own captions, user words as in the text-control section (docs/prior.md).</p>'
            + table(header, body, ["ref" if r["prior"] == "teacher" else "" for r in rows]) + cost)
