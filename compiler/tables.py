"""The one table renderer: reports, commands and benchmarks print every table through :func:`table`,
as plain text for a terminal or as a Markdown pipe table."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

FORMATS = ("text", "markdown")


def _pad(cell: str, width: int, align: str) -> str:
    return cell.rjust(width) if align == "r" else cell.center(width) if align == "c" else cell.ljust(width)


def _rule(width: int, align: str) -> str:
    """The Markdown separator cell of a column ``width + 2`` characters wide."""
    if align == "r":
        return "-" * (width + 1) + ":"
    if align == "c":
        return ":" + "-" * width + ":"
    return "-" * (width + 2)


def table(
    rows: Iterable[Sequence[object]],
    headers: Sequence[str],
    *,
    fmt: str = "text",
    align: str | None = None,
) -> str:
    """``rows`` under ``headers``; a cell shows as ``str(cell)`` (format numbers before), None as empty.

    ``fmt``: ``"text"`` (columns two spaces apart under a dashed rule) or ``"markdown"`` (a pipe
    table, readable as plain text too). ``align``: one letter per column, ``l``/``r``/``c``
    (default: all left).
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {', '.join(FORMATS)}, got {fmt!r}")
    n = len(headers)
    align = "l" * n if align is None else align
    if len(align) != n or set(align) - set("lrc"):
        raise ValueError(f"align needs one of l/r/c per column ({n} columns), got {align!r}")
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    short = [i for i, row in enumerate(cells[1:]) if len(row) != n]
    if short:
        raise ValueError(f"row {short[0]} has {len(cells[short[0] + 1])} cells for {n} columns")
    widths = [max(len(row[i]) for row in cells) for i in range(n)]
    if fmt == "text":
        def line(row):
            return "  ".join(_pad(c, w, a) for c, w, a in zip(row, widths, align)).rstrip()

        rule = "  ".join("-" * w for w in widths)
    else:
        def line(row):
            return "| " + " | ".join(_pad(c, w, a) for c, w, a in zip(row, widths, align)) + " |"

        rule = "|" + "|".join(_rule(w, a) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(cells[0]), rule, *map(line, cells[1:])])
