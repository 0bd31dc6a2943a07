"""Break what the suite says it guards, one mutant at a time, and run the tests that should catch each.

    python tests/mutants.py [--root DIR] [--only NAME ...]     (make mutants)

Each mutant is one hand-made change to raydino's code, applied to a scratch
copy of ``--root`` (default: this checkout), where the tests named for it
run (``pytest -x``). A mutant is *caught* when a test fails, *survives*
when every test passes, and is an *error* when its change no longer
applies or no test ran. The script exits 1 if any mutant survives. The
scratch copy is imported ahead of the installed package (``PYTHONPATH``),
so the checkout itself is never touched; the cluster tests are skipped.
Output and timings: docs/mutants.md.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COPIED = ("raydino", "tests", "jobs", "cluster", "pyproject.toml")


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]  # files; those missing in --root are left out
    select: str = ""        # pytest -k


SERVE = ("tests/test_serve.py",)
MUTANTS = [
    Mutant("the server ignores the prompt", "raydino/serve/faces.py",
           "emb = self.sampler.text_condition([asks[i].prompt for i in members])",
           'emb = self.sampler.text_condition(["a face" for i in members])', SERVE, "not ctrl_c"),
    Mutant("the server ignores cfg", "raydino/serve/faces.py",
           "guidance = self.prior.cfg.guidance if guidance is None else guidance",
           "guidance = self.prior.cfg.guidance", SERVE, "not ctrl_c"),
    Mutant("a batch gives its prompted requests the first one's prompt", "raydino/serve/faces.py",
           "cond = torch.cat([e[None].expand(n, -1) for e, n in zip(emb, sizes, strict=True)])",
           "cond = emb[:1].expand(sum(sizes), -1)", SERVE, "not ctrl_c"),
    Mutant("the hair figure returns 1", "raydino/evaluation/text_control.py",
           'f"text_control/{what}": v for k, v in rates.items()}',
           'f"text_control/{what}": (1.0 if k == "hair_colour" else v) for k, v in rates.items()}',
           ("tests/test_text_and_eval.py", "tests/test_text_control.py")),
    Mutant("the report drops the best trial's value", "raydino/report/training.py",
           "else esc(fmt(r[c])) for c in columns] for r in rows]",
           'else ("" if r.get("trial_id") == best_id and c == metric else esc(fmt(r[c]))) for c in columns]'
           " for r in rows]", ("tests/test_report.py",)),
    Mutant("--resume starts fresh", "raydino/commands.py",
           "metrics = train(cfg, args.pyramids, args.out, resume=args.resume, holdout=args.holdout)",
           "metrics = train(cfg, args.pyramids, args.out, resume=False, holdout=args.holdout)",
           ("tests/test_train_ray.py",), "resume"),
    Mutant("a value rule is removed (prior.time_shift)", "raydino/config/checks.py",
           "_need(prior.time_shift > 0,", "_need(True or prior.time_shift > 0,",
           ("tests/test_config_rules.py", "tests/test_config.py", "tests/test_failing_well.py"),
           "rule or value or config"),
]


def scratch_copy(root: Path, into: Path) -> Path:
    for name in COPIED:
        src = root / name
        if src.is_dir():
            shutil.copytree(src, into / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.is_file():
            shutil.copy(src, into / name)
    return into


def run(mutant: Mutant, root: Path) -> tuple[str, float, str]:
    """(verdict, seconds, the failing test or why it is an error)."""
    start = time.time()
    with tempfile.TemporaryDirectory(prefix="raydino-mutant-") as tmp:
        copy = scratch_copy(root, Path(tmp))
        target = copy / mutant.file
        source = target.read_text()
        if source.count(mutant.old) != 1:
            return "error", 0.0, f"{mutant.file}: the code to change is there {source.count(mutant.old)} times"
        target.write_text(source.replace(mutant.old, mutant.new))
        tests = [t for t in mutant.tests if (copy / t).is_file()]
        if not tests:
            return "error", 0.0, "none of its test files exists"
        env = {**os.environ, "PYTHONPATH": str(copy), "RAYDINO_SKIP_CLUSTER_TESTS": "1"}
        cmd = [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", *tests]
        done = subprocess.run([*cmd, *(["-k", mutant.select] if mutant.select else [])], cwd=copy, env=env,
                              capture_output=True, text=True)
    seconds = time.time() - start
    failed = [line.split(" ", 1)[1].split(" - ")[0] for line in done.stdout.splitlines() if line.startswith("FAILED ")]
    if done.returncode == 1:
        return "caught", seconds, failed[0] if failed else "(a test failed)"
    if done.returncode == 0:
        return "SURVIVED", seconds, done.stdout.strip().splitlines()[-1]
    return "error", seconds, f"pytest exit {done.returncode}: {done.stdout.strip().splitlines()[-1:]}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the checkout to copy and mutate (default: this one)")
    parser.add_argument("--only", nargs="*", default=None, help="run the mutants whose name contains one of these")
    args = parser.parse_args()
    chosen = [m for m in MUTANTS if not args.only or any(o in m.name for o in args.only)]
    t0, verdicts = time.time(), []
    print(f"{len(chosen)} mutants of {args.root}", flush=True)
    for mutant in chosen:
        verdict, seconds, detail = run(mutant, args.root)
        verdicts.append(verdict)
        print(f"{verdict:8}  {seconds:5.0f} s  {mutant.name}: {detail}", flush=True)
    print(f"{verdicts.count('caught')} caught, {verdicts.count('SURVIVED')} survived, {verdicts.count('error')} errors "
          f"in {time.time() - t0:.0f} s")
    return 1 if "SURVIVED" in verdicts or "error" in verdicts else 0


if __name__ == "__main__":
    sys.exit(main())
