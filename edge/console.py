"""The manual-override console: command lines from an operator, dispatched on the node loop
through the node's one command registry. This module reads lines and writes replies."""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from typing import Any, TextIO

from edge.control import MAX_LINE, Reply

Post = Callable[[str, dict[str, Any]], None]


def format_reply(reply: Reply) -> str:
    """`ok {json}` or `error <why>`: one line an operator reads and a script parses."""
    if reply.ok:
        return "ok " + json.dumps(reply.result, separators=(",", ":"), default=str)
    return f"error {reply.error}"


class StreamConsole:
    """Reads lines from a text stream (stdin of `edge run`) on a thread; replies on another stream."""

    def __init__(self, post: Post, source: TextIO | None = None, sink: TextIO | None = None):
        self.post = post
        self.source = source or sys.stdin
        self.sink = sink or sys.stdout
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, name="console-stdin", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def _run(self) -> None:
        for raw in self.source:
            line = raw.rstrip("\r\n")
            if len(line) > MAX_LINE:
                self.reply(Reply(False, error=f"line too long ({len(line)} characters, at most {MAX_LINE})"))
                continue
            if line.strip() and not line.lstrip().startswith("#"):
                self.post("console_line", {"line": line, "reply": self.reply})

    def reply(self, reply: Reply) -> None:
        with self.lock:
            try:
                self.sink.write(format_reply(reply) + "\n")
                self.sink.flush()
            except (OSError, ValueError):
                pass  # the operator went away; the node carries on
