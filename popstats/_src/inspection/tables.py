"""Text and HTML tables and self-contained pages, shared by every report.

Stage: inspection (used by :mod:`popstats._src.inspection.describe`,
:mod:`~popstats._src.inspection.report`, :mod:`~popstats._src.inspection.cli`
and :mod:`popstats._src.drift`). Members: :func:`escape_text`,
:func:`display_width`, :func:`text_table`, :func:`html_table` (tables),
:func:`page_start`, :func:`png_image` and :func:`write_page` (HTML pages).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import unicodedata
from collections.abc import Sequence

from popstats._src.errors import PopstatsError

__all__ = ["display_width", "escape_text", "html_table", "page_start", "png_image",
           "text_table", "write_page"]

def escape_text(text: object) -> str:
    """``str(text)`` on one line: control and other unprintable characters escaped.

    Each character :meth:`str.isprintable` rejects (newline, tab, escape,
    line separators, direction overrides, ...) is written as :func:`repr`
    writes it (``\\n``, ``\\t``, ``\\x1b``, ``\\u2028``); everything else is
    kept, backslashes included.

    Examples
    --------
    >>> print(escape_text("a\\nb\\tc"))
    a\\nb\\tc
    """
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def display_width(text: str) -> int:
    """Terminal columns that printable ``text`` takes.

    Wide East Asian characters take two, combining marks none, others one.
    """
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else
               2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, tuple) and all(isinstance(v, str) for v in value):
        return escape_text(",".join(value)) or "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return escape_text(value)


def text_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A plain text table with aligned columns, one line per row.

    Cells are escaped with :func:`escape_text` (a label holding a newline
    shows ``\\n``) and padded by their :func:`display_width`.

    Examples
    --------
    >>> print(text_table(("name", "n"), [["a\\nb", 1], ["c", 22]]))
    name  n
    ----  --
    a\\nb  1
    c     22
    """
    cells = [[escape_text(h) for h in header]] + [[_cell(v) for v in row]
                                                   for row in rows]
    widths = [max(display_width(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c + " " * (w - display_width(c))
                       for c, w in zip(r, widths, strict=True)).rstrip()
             for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def html_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """An HTML table (cells escaped as in :func:`text_table`, then for HTML)."""
    head = "".join(f"<th>{html.escape(escape_text(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
        for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; background: #fff; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.2em 0.6em; text-align: left; }
th { background: #e8eef7; }
li.warning { color: #a40; }
img { max-width: 100%; border: 1px solid #ddd; margin: 0.5em 0; }
"""


def page_start(title: str) -> list[str]:
    """The opening lines of a self-contained HTML page: head, style, heading."""
    return [
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]


def written_at() -> str:
    """When a page is written, in UTC, as the pages say it."""
    return f"{datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC"


def png_image(fig, alt: str) -> str:
    """An ``<img>`` element holding a matplotlib figure as an embedded PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    data = base64.b64encode(buffer.getvalue()).decode("ascii")
    return f'<img alt="{alt}" src="data:image/png;base64,{data}">'


def write_page(path: str, text: str, call: str) -> str:
    """Write an HTML page to ``path`` (checked by ``check_target``)."""
    try:
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    except OSError as exc:
        raise PopstatsError(
            f"{call}(path=...): cannot write {path!r}: {exc.strerror or exc}. "
            f"Choose another name or folder (check its permissions)."
        ) from exc
    return path
