"""A small report builder: headings, paragraphs, tables and images, written as ``report.md``
(images linked by paths relative to it) and optionally the same content as a standalone
``report.html``. Files are written atomically (temporary file in the same folder, then
``os.replace``), so a reader never sees half a report."""

from __future__ import annotations

import dataclasses
import html
import os
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ambient.files import atomic_write_text

Row = Any  # a Mapping or a dataclass instance (cells by column name) or a Sequence of cells


def command_line(script: str, argv: Sequence[str] | None = None) -> str:
    """The shell command that reruns ``script`` (a path such as ``benchmarks/step_cost.py``)
    with ``argv`` (default: this process's arguments), each argument quoted as the shell needs:
    the line a page prints so that a reader can reproduce it."""
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", script, *map(shlex.quote, args)])


def _row_values(row: Row, columns: Sequence[str]) -> list[Any]:
    """A row's cells in column order: a mapping or dataclass by column name, a sequence as is."""
    if dataclasses.is_dataclass(row) and not isinstance(row, type):
        row = dataclasses.asdict(row)
    if isinstance(row, Mapping):
        return [row.get(c, "") for c in columns]
    return list(row)


def _format(value: Any, digits: int) -> str:
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def _md_row(values: Sequence[str]) -> str:
    return "| " + " | ".join(v.replace("|", "\\|") for v in values) + " |"


class Report:
    """Collects blocks in order; :meth:`write` renders them. Methods return ``self`` to chain."""

    def __init__(self, title: str) -> None:
        self.title = title
        self._blocks: list[tuple[str, Any]] = []

    def heading(self, text: str, level: int = 2) -> Report:
        """A section heading (level 2 by default; the title is level 1)."""
        self._blocks.append(("heading", (max(1, min(level, 6)), text)))
        return self

    def text(self, text: str) -> Report:
        """A paragraph (markdown in report.md, escaped plain text in report.html)."""
        self._blocks.append(("text", text))
        return self

    def table(self, rows: Sequence[Row], columns: Sequence[str] | None = None,
              digits: int = 4) -> Report:
        """A table; rows are mappings or dataclasses (cells picked by column name) or sequences.
        ``columns`` defaults to the first row's keys; floats get ``digits`` significant digits."""
        if columns is None:
            first = rows[0] if rows else {}
            if dataclasses.is_dataclass(first) and not isinstance(first, type):
                first = dataclasses.asdict(first)
            if not isinstance(first, Mapping):
                raise ValueError("Report.table needs columns when rows are plain sequences")
            columns = list(first)
        cells = [[_format(v, digits) for v in _row_values(r, columns)] for r in rows]
        self._blocks.append(("table", (list(columns), cells)))
        return self

    def image(self, path: str | Path, caption: str = "") -> Report:
        """An image file (e.g. a PNG from :mod:`ambient.evaluate.plots`), linked relative to the
        report when written."""
        self._blocks.append(("image", (Path(path).resolve(), caption)))
        return self

    def markdown(self, base: str | Path) -> str:
        """The report as markdown, image links relative to the folder ``base``."""
        out = [f"# {self.title}", ""]
        for kind, payload in self._blocks:
            if kind == "heading":
                level, text = payload
                out += ["#" * level + " " + text, ""]
            elif kind == "text":
                out += [payload, ""]
            elif kind == "table":
                columns, cells = payload
                out += [_md_row(columns), "|" + "---|" * len(columns)]
                out += [_md_row(row) for row in cells] + [""]
            else:
                path, caption = payload
                out += [f"![{caption}]({_relative(path, base)})"]
                out += [f"*{caption}*", ""] if caption else [""]
        return "\n".join(out)

    def html(self, base: str | Path) -> str:
        """The same content as a standalone HTML page, image links relative to ``base``."""
        e = html.escape
        body = [f"<h1>{e(self.title)}</h1>"]
        for kind, payload in self._blocks:
            if kind == "heading":
                level, text = payload
                body.append(f"<h{level}>{e(text)}</h{level}>")
            elif kind == "text":
                body.append(f"<p>{e(payload)}</p>")
            elif kind == "table":
                columns, cells = payload
                head = "".join(f"<th>{e(c)}</th>" for c in columns)
                rows = "".join("<tr>" + "".join(f"<td>{e(v)}</td>" for v in row) + "</tr>"
                               for row in cells)
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
            else:
                path, caption = payload
                body.append(f'<figure><img src="{e(_relative(path, base))}" alt="{e(caption)}">'
                            f"<figcaption>{e(caption)}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:60em;margin:2em auto}"
                 "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 8px}"
                 "td{text-align:right}img{max-width:100%}")
        return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{e(self.title)}'
                f"</title><style>{style}</style></head>\n<body>\n" + "\n".join(body)
                + "\n</body></html>\n")

    def write(self, path: str | Path, html: bool = True) -> Path:
        """Write the markdown to ``path`` (a ``.md`` file, or a folder to get ``report.md`` in
        it) and, with ``html``, the page next to it with suffix ``.html``; returns the markdown
        path."""
        path = Path(path)
        if path.suffix != ".md":
            path = path / "report.md"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path, self.markdown(path.parent))
        if html:
            atomic_write_text(path.with_suffix(".html"), self.html(path.parent))
        return path


def _relative(target: Path, base: str | Path) -> str:
    """``target`` relative to the folder ``base`` as a URL path (forward slashes, quoted)."""
    return quote(Path(os.path.relpath(target, Path(base).resolve())).as_posix())
