"""What a report reads: the folders of a run and its neighbours, and what sections share of them.

A run made by ``raydino run`` finds its sweep, pyramids and samples through
:class:`~raydino.layout.Output`; any of them can be given instead, so a run
made by hand gets a page too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

from raydino.config import Config
from raydino.layout import Output, Run, read_json
from raydino.report.assets import Assets

SNAPSHOTS = 6  # validation grids per stage taken from TensorBoard


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
    """Explicit folders win; the others follow ``raydino run``'s layout.

    The pyramid defaults to the held-out one, then the training one, then the
    one the run's evaluation names: the picture should show images the
    generator was not trained on where there are any.
    """
    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    root = Output.of(run)

    def pick(given: str | Path | None, *candidates: str | Path | None) -> Path | None:
        if given is not None:
            return Path(given)
        return next((Path(c) for c in candidates if c is not None and Path(c).exists()), None)

    try:
        evaluation = read_json(Run(run).eval) or {}
    except ValueError:  # said in the key figures section
        evaluation = {}
    return Inputs(
        run=run,
        out=Path(out) if out else (root or Output(run)).report,  # a run outside the layout holds its own report
        sweep=pick(sweep, root and root.sweep.path),
        pyramids=pick(pyramids, root and root.pyramids_val, root and root.pyramids, evaluation.get("pyramids")),
        samples=pick(samples, root and root.samples),
    )


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


class Context:
    """What the sections read, each loaded on first use.

    A file that cannot be read raises inside the section that reads it, which
    then shows the error instead of its content.
    """

    def __init__(self, inputs: Inputs):
        self.inputs = inputs
        self.run = Run(inputs.run)
        self.assets = Assets(inputs.out)

    @cached_property
    def cfg(self) -> Config | None:
        return self.run.config_of() if self.run.config.is_file() else None

    @cached_property
    def evaluation(self) -> dict | None:
        return read_json(self.run.eval)

    @cached_property
    def metrics(self) -> dict | None:
        return read_json(self.run.metrics)

    @cached_property
    def events(self) -> Events:
        return read_events(self.run.tb)
