"""A TOML file read with the line of every table and key, so errors can say FILE:LINE.

`tomllib` gives values but no positions; `TomlSource` scans the text once more to map
each table header and key to its line. Pure: the caller passes the text.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field
from typing import Any

_HEADER = re.compile(r"^\s*\[\[?\s*([^\[\]]+?)\s*\]\]?\s*(#.*)?$")
_KEY = re.compile(r"""^\s*((?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*')(?:\s*\.\s*(?:[A-Za-z0-9_-]+|"[^"]*"|'[^']*'))*)\s*=""")
_DECODE_POS = re.compile(r"\(at line (\d+), column (\d+)\)")
_TRIPLE = ('"""', "'''")


def split_dotted(text: str) -> tuple[str, ...]:
    """`a."b.c".d` -> ("a", "b.c", "d")."""
    parts: list[str] = []
    for m in re.finditer(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)', text):
        parts.append(next(g for g in m.groups() if g is not None))
    return tuple(parts)


@dataclass
class TomlSource:
    """Parsed TOML plus a map from (table..., key) paths to 1-based line numbers."""

    name: str
    data: dict[str, Any] = field(default_factory=dict)
    lines: dict[tuple[str, ...], int] = field(default_factory=dict)
    error: str | None = None
    error_line: int = 0

    @classmethod
    def parse(cls, name: str, text: str) -> TomlSource:
        """Parse `text`; a syntax error is kept in `.error`/`.error_line`, never raised."""
        src = cls(name)
        try:
            src.data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            msg = str(exc)
            m = _DECODE_POS.search(msg)
            src.error_line = int(m.group(1)) if m else 1
            src.error = _DECODE_POS.sub("", msg).strip() + (f" (column {m.group(2)})" if m else "")
            return src
        src._index(text)
        return src

    def _index(self, text: str) -> None:
        table: tuple[str, ...] = ()
        in_multiline: str | None = None
        for number, line in enumerate(text.splitlines(), start=1):
            if in_multiline:
                if line.count(in_multiline) % 2 == 1:
                    in_multiline = None
                continue
            header = _HEADER.match(line)
            if header:
                table = split_dotted(header.group(1))
                self.lines.setdefault(table, number)
                continue
            key = _KEY.match(line)
            if key:
                path = table + split_dotted(key.group(1))
                self.lines.setdefault(path, number)
                for i in range(len(table) + 1, len(path)):
                    self.lines.setdefault(path[:i], number)
                rest = line[key.end():]
                for quote in _TRIPLE:
                    if rest.count(quote) % 2 == 1:
                        in_multiline = quote

    def line_of(self, path: tuple[str, ...]) -> int:
        """The line of `path`, or of its nearest enclosing table, or 1."""
        for i in range(len(path), 0, -1):
            if path[:i] in self.lines:
                return self.lines[path[:i]]
        return 1
