"""``raydino report``: one static HTML page of a run, to look at rather than read logs.

The page is a plain file (no server, no JavaScript): images are copied into
a folder beside it (``<page>_files/``) and curves are inline SVG drawn here
from the TensorBoard event files. It shows the key figures of ``raydino
eval``, the validation grids of every stage, the samples of ``raydino
sample`` (reconstructions, prompts with their CLIP scores, edits, prior, mix), the
attribute agreement per attribute, text control per attribute (prompt samples,
text-guided edits, the guidance curve), the DINOv2 pyramid itself as PCA colours,
the training curves, the Tune trials and, for ``raydino tiny-models``
encoders, their linear probes. A section whose inputs are missing says so and
names the command that makes them; one unreadable input never costs the
whole page.

Every figure is printed with :func:`~raydino.report.markup.fmt` (4
significant digits), so the page can be checked against the JSON and CSV it
was made from.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from importlib.resources import files
from pathlib import Path

from raydino.layout import Output
from raydino.report.few_step import section_few_step
from raydino.report.figures import (
    section_attributes,
    section_detail,
    section_figures,
    section_parts,
    section_prior,
)
from raydino.report.inputs import Context, find_inputs
from raydino.report.markup import esc, missing
from raydino.report.media import section_pyramid, section_samples, section_stages
from raydino.report.provenance import section_encoders, section_run
from raydino.report.text_control import section_text_control
from raydino.report.training import section_curves, section_tune

log = logging.getLogger(__name__)

SECTIONS: list[tuple[str, str, Callable[[Context], str]]] = [  # id, title, what builds its body
    ("figures", "Key figures", section_figures),
    ("detail", "Detail: noise and sharpness", section_detail),
    ("attributes", "Attribute agreement", section_attributes),
    ("parts", "Parts: are eyes, mouth and glasses drawn?", section_parts),
    ("prior-figures", "The prior: flow against PCA", section_prior),
    ("text-control", "Text control", section_text_control),
    ("one-step", "The one-step prior: student against teacher", section_few_step),
    ("stages", "Validation grids per stage", section_stages),
    ("samples", "Samples", section_samples),
    ("pyramid", "The feature pyramid", section_pyramid),
    ("curves", "Training curves", section_curves),
    ("tune", "Loss-weight sweep (Ray Tune)", section_tune),
    ("encoders", "What the encoders see (probes)", section_encoders),
    ("run", "Run", section_run),
]


def _guarded(build: Callable[[Context], str], ctx: Context) -> str:
    try:
        return build(ctx)
    except Exception as exc:  # one unreadable input must not cost the whole page
        log.warning("report section failed: %s", exc, exc_info=True)
        return missing(f"This section could not be built: {type(exc).__name__}: {exc}")


def _resource(name: str) -> str:
    """A file shipped in this package: the page's markup and style are edited as HTML and CSS, not as Python."""
    return files(__name__).joinpath(name).read_text(encoding="utf-8")


def write_report(run: str | Path, *, sweep: str | Path | None = None, pyramids: str | Path | None = None,
                 samples: str | Path | None = None, out: str | Path | None = None) -> Path:
    """Write the report page of ``run`` and return its path."""
    inputs = find_inputs(run, sweep, pyramids, samples, out)
    inputs.out.parent.mkdir(parents=True, exist_ok=True)
    ctx = Context(inputs)
    body = "".join(f'<section id="{sid}"><h2>{esc(title)}</h2>{_guarded(build, ctx)}</section>'
                   for sid, title, build in SECTIONS)
    nav = "".join(f'<a href="#{sid}">{esc(title.split(" (")[0])}</a>' for sid, title, _ in SECTIONS)
    root = Output.of(inputs.run)
    name = root.root.name if root else inputs.run.name
    page = _resource("page.html").format(title=esc(f"raydino · {name}"), name=esc(name), run=esc(inputs.run.resolve()),
                                         when=time.strftime("%Y-%m-%d %H:%M"), nav=nav, body=body,
                                         css=_resource("page.css"))
    inputs.out.write_text(page)
    return inputs.out
