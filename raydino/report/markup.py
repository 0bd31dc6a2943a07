"""How the page writes figures, text and tables, the same way in every section."""

from __future__ import annotations

import html
import math


def fmt(value: object) -> str:
    """How the page prints a figure: 4 significant digits for floats, so it can be checked against its source."""
    if value is None or value == "":
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    return str(value)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def missing(text: str, command: str = "") -> str:
    """A section's missing input, with the command that makes it: the page says what to do rather than stay blank."""
    cmd = f' Make it with <code>{esc(command)}</code>.' if command else ""
    return f'<p class="missing">{esc(text)}{cmd}</p>'


def table(header: list[str], rows: list[list[str]], row_classes: list[str] | None = None) -> str:
    """Cells are HTML already: the callers escape text and mark figures up."""
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join(f'<tr class="{c}">' + "".join(f"<td>{v}</td>" for v in row) + "</tr>"
                   for row, c in zip(rows, row_classes or [""] * len(rows), strict=True))
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'
