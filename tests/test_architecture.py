"""The rule docs/architecture.md states: a module imports only from the rows above it in its table.

The table lists the modules in the order of the data flow, ground floor
first; an import that points down the table is an arrow running the wrong
way (a reader of the lower module must then know the higher one). Lazy
imports inside functions count too. ``config/`` and ``layout.py`` sit at the
top and import nothing below them.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "raydino"


def table_rows() -> dict[str, int]:
    """Each module or package the table names (``pyramids/schema.py``, ``report/``) -> its row."""
    rows = [line for line in (ROOT / "docs" / "architecture.md").read_text().splitlines() if line.startswith("| `")]
    return {name: i for i, row in enumerate(rows) for name in re.findall(r"`([^`]+)`", row.split("|")[1])}


def row_of(rel: str, rows: dict[str, int]) -> int | None:
    return rows.get(rel, rows.get(rel.split("/")[0] + "/"))


def imported(path: Path) -> set[str]:
    """The raydino modules ``path`` imports, as paths relative to the package (``pyramids/schema.py``)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("raydino."):
            parts = node.module.split(".")[1:]
            names = [f"{'/'.join(parts)}/{a.name}.py" for a in node.names] + ["/".join(parts) + ".py"]
            out |= {n for n in names if (PACKAGE / n).is_file()}
    return out


def test_every_import_points_up_the_architecture_table():
    rows = table_rows()
    wrong = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = str(path.relative_to(PACKAGE))
        mine = row_of(rel, rows)
        if mine is None or rel.startswith("bench/"):  # the benches measure everything, below every row
            continue
        for target in sorted(imported(path)):
            theirs = row_of(target, rows)
            if theirs is not None and theirs > mine:
                wrong.append(f"{rel} -> {target}")
    assert not wrong, "imports that point down docs/architecture.md's table:\n" + "\n".join(wrong)


def test_the_table_names_every_module():
    rows = table_rows()
    unnamed = [str(p.relative_to(PACKAGE)) for p in sorted(PACKAGE.rglob("*.py"))
               if p.name != "__init__.py" and row_of(str(p.relative_to(PACKAGE)), rows) is None
               and not str(p.relative_to(PACKAGE)).startswith(("configs/",))]
    assert not unnamed, f"modules missing from docs/architecture.md's table: {unnamed}"


def test_only_rays_public_modules_are_imported():
    """Ray's private modules (``ray._private``, ``ray.train.v2._internal``, the GCS protobufs) change without notice."""
    private = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                       else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            private += [f"{path.relative_to(PACKAGE)}: {m}" for m in modules if m.split(".")[0] == "ray"
                        and (any(p.startswith("_") for p in m.split(".")) or m.startswith("ray.core.generated"))]
    assert not private, "imports of Ray's private modules:\n" + "\n".join(private)


def test_no_module_is_over_300_lines():
    long = {str(p.relative_to(PACKAGE)): n for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text().splitlines())) > 300}
    assert not long, f"modules over 300 lines (split them by job): {long}"
