"""Logging for a service: journald priority prefixes under systemd, timestamps on a terminal."""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    """`<6>edge.node: message`: journald reads the priority; it adds the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        return "\n".join(f"<{prio}>{record.name}: {line}" for line in text.splitlines() or [""])


def setup_logging(level: str = "info", fmt: str = "auto") -> None:
    """Configure the root logger once; `fmt` is auto, journal or text."""
    journal = fmt == "journal" or (fmt == "auto" and bool(os.environ.get("JOURNAL_STREAM")))
    handler = logging.StreamHandler(sys.stderr)
    if journal:
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
