"""Where things are: the folders of a run, a sweep and ``raydino run``'s output.

Every file and folder name of these layouts is written here and nowhere
else, so the code that writes a file and the code that reads it cannot
drift apart. This module only names paths (and reads the JSON and config
files at them); :mod:`raydino.models.saved` loads the models they hold.

```
OUT/                      Output
  config.yaml
  fitted.json             sizes lowered to the pyramids' rows (raydino.data_fit)
  faces/ faces-val/       synthetic faces (no --images)
  models/                 the offline demo's tiny encoders
  pyramids/ pyramids-val/ training and held-out pyramids
  runs/train/             Run (runs/compare-<kind>/: the comparison run)
  sweep/                  Sweep
  samples/                Samples
  report/index.html
```
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from raydino.config import Config, load_config

CONFIG = "config.yaml"  # the resolved config, in every run, trial, sweep, checkpoint and output folder


class Checkpoint:
    """The files of one training checkpoint (the generator's and the prior's alike)."""

    MODEL, EMA, OPTIMIZER, STATE = "model.safetensors", "ema.safetensors", "optimizer.pt", "state.json"

    @staticmethod
    def rng(rank: int) -> str:
        """Each worker's noise/shift generator state."""
        return f"rng_rank{rank}.pt"

    @staticmethod
    def folder(step: int | str) -> str:
        """A checkpoint's folder name in its run's checkpoint folder (Ray Train's or the local session's); ``"*"``: a glob."""
        return f"step_{step}" if step == "*" else f"step_{int(step):08d}"


class Run:
    """A training run folder: the generator, its prior, figures, TensorBoard, grids and Ray Train's checkpoints."""

    GENERATOR = "generator.safetensors"  # the finished generator's EMA weights
    PROGRESS, PRIOR_PROGRESS = "progress.json", "prior-progress.json"  # work done (rank 0), for progress bars
    STUDENT, STUDENT_PROGRESS = "prior-student.safetensors", "student-progress.json"
    # Ray Train's run folders, by model
    EXPERIMENTS = {"generator": "checkpoints", "prior": "prior_checkpoints", "student": "student_checkpoints"}

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    config = property(lambda self: self.path / CONFIG)
    generator = property(lambda self: self.path / Run.GENERATOR)
    prior = property(lambda self: self.path / "prior.safetensors")        # the flow prior's EMA weights
    prior_pca = property(lambda self: self.path / "prior_pca.safetensors")  # the PCA Gaussian baseline
    prior_figures = property(lambda self: self.path / "prior.json")     # the prior's training figures
    student = property(lambda self: self.path / Run.STUDENT)  # the few-step prior distilled from it
    student_figures = property(lambda self: self.path / "student.json")  # its distillation's figures
    metrics = property(lambda self: self.path / "metrics.json")         # the generator's training figures
    eval = property(lambda self: self.path / "eval.json")               # `raydino eval`
    tb = property(lambda self: self.path / "tb")
    tb_prior = property(lambda self: self.path / "tb" / "prior")  # its own folder: resuming the prior keeps these
    tb_student = property(lambda self: self.path / "tb" / "student")
    grids = property(lambda self: self.path / "grids")
    progress = property(lambda self: self.path / Run.PROGRESS)  # images done
    prior_progress = property(lambda self: self.path / Run.PRIOR_PROGRESS)  # prior steps done
    student_progress = property(lambda self: self.path / Run.STUDENT_PROGRESS)  # distillation steps done
    # a sweep trial's Ray Train worker groups, one id per line, so the sweep can give them back
    placement_groups = property(lambda self: self.path / "placement_groups.txt")

    def grid(self, resolution: int) -> Path:
        """The last validation grid of a stage."""
        return self.grids / f"stage_{resolution}.png"

    def grid_files(self) -> dict[int, list[tuple[int | None, Path]]]:
        """Every stage's grids by resolution: :meth:`grid` (step None) and any ``stage_<res>_<step>.png`` beside it.

        Grids kept per step show a stage's progress from files, where
        TensorBoard holds only a sample of them.
        """
        out: dict[int, list[tuple[int | None, Path]]] = {}
        for p in self.grids.glob("stage_*.png"):
            if m := re.fullmatch(r"stage_(\d+)(?:[_-](?:step)?_?(\d+))?\.png", p.name):
                out.setdefault(int(m.group(1)), []).append((int(m.group(2)) if m.group(2) else None, p))
        return out

    def experiment(self, model: str = "generator") -> str:
        """Ray Train's run folder name for ``model`` ("generator", "prior" or "student"), inside the run."""
        return Run.EXPERIMENTS[model]

    def started(self, model: str = "generator") -> bool:
        """Whether a run of ``model`` here has reported a checkpoint (a crashed attempt to resume).

        The checkpoint folders are named by raydino (:meth:`Checkpoint.folder`,
        passed to Ray Train as ``checkpoint_dir_name``), so this reads none of
        Ray Train's own bookkeeping files.
        """
        return any((self.path / self.experiment(model)).glob(Checkpoint.folder("*")))

    def clear(self, model: str) -> None:
        """Remove what training ``model`` wrote here (``--overwrite``), and what was made from it.

        The generator's is the whole run (the prior, the figures and the
        samples all come from it); the prior's includes its student.
        """
        if model == "generator":
            shutil.rmtree(self.path, ignore_errors=True)
            return
        files = [self.student, self.student_figures, self.student_progress]
        folders = [self.tb_student, self.path / self.experiment("student")]
        if model == "prior":
            files += [self.prior, self.prior_pca, self.prior_figures, self.prior_progress]
            folders += [self.tb_prior, self.path / self.experiment("prior")]
        for path in files:
            path.unlink(missing_ok=True)
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)

    def config_of(self) -> Config:
        """The config the run was made with."""
        if not self.config.is_file():
            raise FileNotFoundError(f"{self.path}: no {CONFIG} (not a run folder)")
        return load_config(config_file=str(self.config))

    def figures(self, name: str = "eval") -> dict | None:
        """A JSON file of the run (``eval``, ``metrics``, ``prior_figures`` or ``student_figures``), None when absent."""
        return read_json(getattr(self, name))


class Sweep:
    """A Tune sweep folder: its config, the trials' runs, Tune's own state and the result files."""

    EXPERIMENT = "tune"  # Tune's state folder inside the sweep (what `Tuner.restore` reads)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    config = property(lambda self: self.path / CONFIG)
    results = property(lambda self: self.path / "results.csv")  # one row per trial
    best = property(lambda self: self.path / "best.json")       # the best trial; written last: the sweep finished
    best_config = property(lambda self: self.path / "best.yaml")  # its config, which `--config` accepts
    trials = property(lambda self: self.path / "trials")
    state = property(lambda self: self.path / Sweep.EXPERIMENT)

    def trial(self, trial_id: str) -> Run:
        return Run(self.trials / trial_id)

    def trial_runs(self) -> list[Run]:
        return [Run(p) for p in sorted(self.trials.glob("*")) if p.is_dir()]


class Samples:
    """The sample grids ``raydino run`` draws, by file name in its samples folder."""

    IMAGE, VARY, PROMPTS, MIX = "image.png", "vary.png", "prompts.png", "mix.png"
    EDITS = "edits.png"  # a held-out face edited toward each of the run's prompts
    PRIOR, PRIOR_PCA = "prior.png", "prior_pca.png"
    NOISE, NOISE_COMPARE = "noise.png", "noise-compare.png"  # the run's draws per code; its comparison run's


class Output:
    """``raydino run``'s output folder (``cfg.out``)."""

    COMPARE = "compare-"  # a comparison run's folder name: this, then its loss.kind

    def __init__(self, root: str | Path):
        self.root = Path(root)

    config = property(lambda self: self.root / CONFIG)
    fitted = property(lambda self: self.root / "fitted.json")  # sizes lowered to what the data holds
    faces = property(lambda self: self.root / "faces")
    faces_val = property(lambda self: self.root / "faces-val")
    models = property(lambda self: self.root / "models")
    pyramids = property(lambda self: self.root / "pyramids")
    pyramids_val = property(lambda self: self.root / "pyramids-val")
    run = property(lambda self: Run(self.root / "runs" / "train"))
    sweep = property(lambda self: Sweep(self.root / "sweep"))
    samples = property(lambda self: self.root / "samples")
    report = property(lambda self: self.root / "report" / "index.html")

    def compare(self, kind: str) -> Run:
        """The comparison run trained with ``loss.kind = kind``."""
        return Run(self.root / "runs" / f"{Output.COMPARE}{kind}")

    def runs(self) -> list[Run]:
        """The main run, then the comparison runs."""
        return [self.run, *(Run(p) for p in sorted((self.root / "runs").glob(f"{Output.COMPARE}*")))]

    @staticmethod
    def of(run: str | Path) -> Output | None:
        """The output folder ``run`` sits in, None for a run made outside ``raydino run``."""
        run = Path(run)
        return Output(run.parent.parent) if run.parent.name == "runs" else None


def read_json(path: Path) -> dict | None:
    """The file's JSON, ``None`` when it is absent; an unreadable file is an error naming it."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON ({exc})") from None
