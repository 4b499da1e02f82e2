"""`edge demo --keep`: the simulated line with `edge web` beside it, end to end. The real
stations publish the public subtree; the live views show them, and a visitor's page opens their
stand with the inspection's real picture; the line stays up until Ctrl-C."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from edge.sim.line import CHECKOUT, free_port


class Output:
    """The demo's output lines, read on a thread (select() cannot see lines Python already buffered)."""

    def __init__(self, proc: subprocess.Popen[str]):
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=lambda: [self.lines.put(line) for line in proc.stdout or ()], daemon=True).start()

    def until(self, pattern: str, timeout: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            found = re.search(pattern, line)
            if found:
                return found
        raise AssertionError(f"no {pattern!r} in the demo's output:\n{''.join(self.seen)[-4000:]}")


def get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=10) as r:
        return r.status, r.read()


def test_the_demo_serves_the_live_views_of_its_line_and_stays_until_ctrl_c(tmp_path: Path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edge", "demo", "--workdir", str(tmp_path / "line"),
                             "--web-port", str(port), "--keep", "--seed", "3"], cwd=CHECKOUT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env={**os.environ, "COLUMNS": "200"})
    out = Output(proc)
    try:
        base = f"http://127.0.0.1:{port}"
        out.until(re.escape(f"the line {base}/ , the big screen {base}/screen"), 90)
        page = out.until(r"own page, what their phone opens: (http://\S+)", 60)[1]
        out.until(r"--keep: the line keeps running until Ctrl-C", 240)

        line = json.loads(get(base + "/api/line")[1])
        assert line["link"]["up"]
        assert {n["node"] for s in line["stations"] for n in s["nodes"]} == {
            "intake-1", "laser-1", "printer-1", "transfer-1", "inspection-1", "pickup-1"}
        assert all(n["state"] in ("idle", "busy") for s in line["stations"] for n in s["nodes"])
        (done,) = line["finished"]
        assert done["status"] == "completed" and re.fullmatch(r"\w\.", done["name"])

        status, html = get(page)
        assert status == 200 and b"engraving-svg" in html
        secret = re.search(rb"/api/events/job/[a-z2-7]{8}\?s=([a-z2-7]{20})", html)[1].decode()
        mine = json.loads(get(f"{base}/api/job/{done['id']}?s={secret}")[1])["mine"]
        assert mine["text"] and mine["snapshot"]["verdict"] == "pass"
        status, picture = get(base + mine["snapshot"]["url"])
        assert status == 200 and picture[:2] == b"\xff\xd8"
        assert get(base + "/screen")[0] == 200

        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0, "".join(out.seen)[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
