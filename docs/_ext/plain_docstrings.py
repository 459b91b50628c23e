"""Griffe extension for the API reference: render the package's docstrings as they are written.

The docstrings are plain prose (no Google/NumPy sections) that use backticks for code but also write
things like ``maps[layer]["energy"]``, ``train/<class>/*`` or ``order[k*batch_size:(k+1)*batch_size]``.
Markdown would read those as reference links (a warning, which fails ``mkdocs build --strict``), HTML tags
(silently dropped) or emphasis. This extension escapes ``\\ * _ [ ]`` and ``<`` outside code spans, fenced
blocks and indented code blocks, so every character shows as written; code spans and indented blocks
(e.g. folder layouts) keep their Markdown rendering. Loaded by mkdocs.yml; not part of the package.
"""

from __future__ import annotations

import re

import griffe

_CODE_SPAN = re.compile(r"(`+)(?:.+?)\1")
_SPECIAL = re.compile(r"([\\*_\[\]])")


def _escape_prose(text: str) -> str:
    return _SPECIAL.sub(r"\\\1", text).replace("<", "&lt;")


def _escape_line(line: str) -> str:
    out, last = [], 0
    for match in _CODE_SPAN.finditer(line):
        out += [_escape_prose(line[last:match.start()]), match.group(0)]
        last = match.end()
    out.append(_escape_prose(line[last:]))
    return "".join(out)


def escape_docstring(text: str) -> str:
    """Escape Markdown syntax in the prose lines of `text`, leaving code (spans, fenced, indented) alone."""
    lines, fenced, in_code, previous_blank = [], False, False, True
    for line in text.splitlines():
        blank = not line.strip()
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
            lines.append(line)
        elif fenced:
            lines.append(line)
        else:
            indented = line.startswith("    ") and not blank
            in_code = indented and (previous_blank or in_code) or (blank and in_code)
            lines.append(line if in_code or blank else _escape_line(line))
        previous_blank = blank
    return "\n".join(lines)


class PlainDocstrings(griffe.Extension):
    """Escape every docstring once, after the object tree is complete."""

    def __init__(self) -> None:
        self._done: set[int] = set()

    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        docstring = obj.docstring
        if docstring is None or id(docstring) in self._done:
            return
        self._done.add(id(docstring))
        docstring.value = escape_docstring(docstring.value)
