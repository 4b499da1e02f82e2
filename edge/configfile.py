"""Reading a TOML config file so that every problem names FILE:LINE, section and key.

`TomlSource` keeps the line of every table and key (tomllib gives values, no positions);
`Document` and `Section` give typed, bounded getters that collect issues instead of raising,
so a technician sees every mistake of a file at once; unknown keys get a "did you mean".
Klipper's configfile idea. Pure apart from `open_document`, which reads the file.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REQUIRED: Any = object()

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


@dataclass(frozen=True)
class ConfigIssue:
    """One problem in a config file, located by file, line, section and key."""

    file: str
    line: int
    section: str
    key: str
    message: str

    def __str__(self) -> str:
        where = f"[{self.section}] " if self.section else ""
        key = f"{self.key}: " if self.key else ""
        line = f":{self.line}" if self.line else ""
        return f"{self.file}{line}: {where}{key}{self.message}"


class ConfigError(Exception):
    """A config file could not be loaded; `.issues` lists every problem found."""

    def __init__(self, issues: list[ConfigIssue], unreadable: bool = False):
        self.issues = issues
        self.unreadable = unreadable
        super().__init__("\n".join(str(i) for i in issues))



class Section:
    """Typed, bounded getters over one table; records issues instead of raising."""

    def __init__(self, doc: Document, path: tuple[str, ...], data: Any):
        self.doc = doc
        self.path = path
        self.name = ".".join(path)
        if not isinstance(data, dict):
            doc.issue(path, "", f"must be a table, not {type_name(data)}")
            data = {}
        self.data: dict[str, Any] = data
        self.used: set[str] = set()

    def issue(self, key: str, message: str) -> None:
        self.doc.issue(self.path + ((key,) if key else ()), key, message, section=self.name)

    def has(self, key: str) -> bool:
        return key in self.data

    def _raw(self, key: str, default: Any) -> Any:
        self.used.add(key)
        if key not in self.data:
            if default is REQUIRED:
                self.issue(key, "is required")
            return REQUIRED
        return self.data[key]

    def get(self, key: str, types: tuple[type, ...], what: str, default: Any = REQUIRED) -> Any:
        value = self._raw(key, default)
        if value is REQUIRED:
            return None if default is REQUIRED else default
        if isinstance(value, bool) and bool not in types:
            self.issue(key, f"must be {what}, not a boolean ({value!r})")
            return None if default is REQUIRED else default
        if not isinstance(value, types):
            self.issue(key, f"must be {what}, not {type_name(value)} ({value!r})")
            return None if default is REQUIRED else default
        return value

    def get_str(self, key: str, default: Any = REQUIRED, choices: Iterable[str] | None = None,
                pattern: re.Pattern[str] | None = None, rule: str = "") -> Any:
        value = self.get(key, (str,), "a string", default)
        if not isinstance(value, str) or value == default:
            return value
        if choices is not None:
            choices = tuple(choices)
            if value not in choices:
                self.issue(key, f"{value!r} is not one of {', '.join(choices)}{did_you_mean(value, choices)}")
                return None if default is REQUIRED else default
        if pattern is not None and not pattern.match(value):
            self.issue(key, f"{value!r} is not a valid name ({rule})")
            return None if default is REQUIRED else default
        return value

    def get_int(self, key: str, default: Any = REQUIRED, minval: int | None = None,
                maxval: int | None = None) -> Any:
        value = self.get(key, (int,), "an integer", default)
        if not isinstance(value, int) or isinstance(value, bool):
            return value
        if (minval is not None and value < minval) or (maxval is not None and value > maxval):
            self.issue(key, f"{value} is out of range {_range(minval, maxval)}")
            return None if default is REQUIRED else default
        return value

    def get_bool(self, key: str, default: Any = REQUIRED) -> Any:
        return self.get(key, (bool,), "true or false", default)

    def get_path(self, key: str, default: Any = REQUIRED) -> Path | None:
        value = self.get_str(key, default)
        if not isinstance(value, str):
            return value
        if not value.strip():
            self.issue(key, "must not be empty")
            return None
        path = Path(value).expanduser()
        return path if path.is_absolute() else (self.doc.base / path)

    def get_str_list(self, key: str, default: Any = REQUIRED) -> Any:
        value = self.get(key, (list,), "a list of strings", default)
        if not isinstance(value, list):
            return value
        bad = [v for v in value if not isinstance(v, str)]
        if bad:
            self.issue(key, f"must be a list of strings; {bad[0]!r} is {type_name(bad[0])}")
            return None if default is REQUIRED else default
        return value

    def table(self, key: str) -> dict[str, Any]:
        value = self.get(key, (dict,), "a table", {})
        return value if isinstance(value, dict) else {}

    def finish(self, extra_allowed: Iterable[str] = ()) -> None:
        """Reject keys nobody asked for, with a "did you mean" from the keys that were."""
        known = self.used | set(extra_allowed)
        for key in self.data:
            if key not in known:
                self.issue(key, f"unknown key{did_you_mean(key, sorted(known))}")


class Document:
    """One TOML file being read: its source, its base directory and the issues found."""

    def __init__(self, source: TomlSource, base: Path):
        self.source = source
        self.base = base
        self.issues: list[ConfigIssue] = []

    def issue(self, path: tuple[str, ...], key: str, message: str, section: str | None = None) -> None:
        if section is None:
            section = ".".join(path[:-1]) if key else ".".join(path)
        self.issues.append(ConfigIssue(self.source.name, self.source.line_of(path), section, key, message))

    def section(self, *path: str, required: bool = True) -> Section:
        data: Any = self.source.data
        for part in path:
            data = data.get(part) if isinstance(data, dict) else None
        if data is None:
            if required:
                self.issue(path, "", "section is missing", section=".".join(path))
            data = {}
        return Section(self, tuple(path), data)

    def finish_top(self, allowed: Iterable[str]) -> None:
        allowed = tuple(allowed)
        for key in self.source.data:
            if key not in allowed:
                self.issue((key,), "", f"unknown section{did_you_mean(key, allowed)}", section=key)

    def raise_if_issues(self) -> None:
        if self.issues:
            self.issues.sort(key=lambda i: i.line)
            raise ConfigError(self.issues)


def type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
            list: "a list", dict: "a table"}.get(type(value), type(value).__name__)


def _range(lo: int | None, hi: int | None) -> str:
    return f"{'-inf' if lo is None else lo}..{'inf' if hi is None else hi}"


def did_you_mean(word: str, candidates: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def open_document(path: str | Path) -> Document:
    """Read and parse a file; unreadable files and TOML syntax errors raise ConfigError."""
    p = Path(path)
    name = str(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError([ConfigIssue(name, 0, "", "", "file not found")], unreadable=True) from None
    except IsADirectoryError:
        raise ConfigError([ConfigIssue(name, 0, "", "", "is a directory, not a file")], unreadable=True) from None
    except PermissionError:
        raise ConfigError([ConfigIssue(name, 0, "", "", "permission denied")], unreadable=True) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(name, 1, "", "", f"not UTF-8 text ({exc.reason} at byte {exc.start})")],
                          unreadable=True) from None
    except OSError as exc:
        raise ConfigError([ConfigIssue(name, 0, "", "", exc.strerror or str(exc))], unreadable=True) from None
    source = TomlSource.parse(name, text)
    doc = Document(source, p.resolve().parent)
    if source.error:
        doc.issues.append(ConfigIssue(name, source.error_line, "", "", f"TOML syntax error: {source.error}"))
        raise ConfigError(doc.issues)
    return doc
