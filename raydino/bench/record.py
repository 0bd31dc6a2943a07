"""Benchmark records: each bench run is one JSON file saying what measured what, and how.

A figure without its machine, library versions and command cannot be checked
or compared, so every bench result starts with :func:`header`, and ``--out``
may name a folder (``docs/benchmarks/``), where :func:`save` gives each run a
file of its own instead of overwriting the last one."""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import platform
import re
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

VERSIONS = ("torch", "transformers", "ray", "pyarrow", "numpy")



def machine() -> dict[str, Any]:
    """CPU model and cores, GPU name, library versions, load: what the figures were measured on."""
    import torch
    import transformers

    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        names = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                 if line.startswith("model name")]
        cpu = names[0] if names else cpu
    return {
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "load_average": os.getloadavg()[0],
    }


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version()}
    for name in VERSIONS:
        try:
            found[name] = md.version(name)
        except md.PackageNotFoundError:
            found[name] = None
    return found


def _git_commit() -> str | None:
    """The commit of the checkout the bench ran from, when it is one (``+`` if it had local edits).

    A copy of the code inside another repository (a carry to a device
    machine) is not that repository's commit: None then.
    """
    root = Path(__file__).resolve().parents[2]
    try:
        top = subprocess.run(["git", "-C", str(root), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        if Path(top).resolve() != root:
            return None
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+" if dirty else "")


def header(bench: str) -> dict[str, Any]:
    """The fields every record starts with: bench, time, command, commit, machine, versions."""
    return {
        "bench": bench,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": "raydino " + " ".join(sys.argv[1:]) if Path(sys.argv[0]).name in ("raydino", "cli.py", "__main__.py")
        else " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "git": _git_commit(),
        "machine": machine(),
        "versions": _versions(),
    }


def record_path(results: dict[str, Any], out: str | Path) -> Path:
    """``out`` itself, or, when it is a folder (existing, or written with a trailing /), a new file in it
    named by bench, machine and time."""
    if not (Path(out).is_dir() or str(out).endswith("/")):
        return Path(out)
    m = results["machine"]
    where = m["gpu"] or f"cpu{m['cores']}"
    slug = re.sub(r"[^a-z0-9]+", "-", where.lower().removeprefix("nvidia ")).strip("-")
    stamp = results["created"].replace(":", "").replace("-", "").removesuffix("+0000")
    return Path(out) / f"{results['bench']}_{slug}_{stamp}.json"


def save(results: dict[str, Any], out: str | Path | None) -> Path | None:
    """Write ``results`` as JSON (see :func:`record_path`); return where."""
    if not out:
        return None
    path = record_path(results, out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=1) + "\n")
    print(f"record: {path}", flush=True)
    return path


# --- measuring ------------------------------------------------------------------------------
