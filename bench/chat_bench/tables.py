"""Markdown tables and figures as the report prints them (the terminal and docs/performance.md)."""

from __future__ import annotations

from collections.abc import Sequence


def fmt(value: float | None, unit: str = "") -> str:
    """A figure as the tables show it: ``-`` for none, thousands separated, 2 decimals below 100
    and 1 above; ``unit`` "x" is a ratio (``0.87x``), any other unit follows the number."""
    if value is None:
        return "-"
    if unit == "x":
        return f"{value:.2f}x"
    if isinstance(value, int) or float(value).is_integer():
        text = f"{int(value):,}"
    else:
        text = f"{value:,.1f}" if abs(value) >= 100 else f"{value:.2f}"
    return f"{text} {unit}".rstrip() if unit not in ("", "x") else text


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table with its columns padded to their widest cell (readable as plain text)."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) \
            + " |"

    return [line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|",
            *(line(r) for r in rows)]
