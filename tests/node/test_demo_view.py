"""The demo's view (edge.sim.view): plain log lines when not on a terminal, one per change and each
written whole from any thread; a rich rendering of stations, jobs and faults; odd input never raises."""

from __future__ import annotations

import io
import logging
import re
import threading
import time

import pytest
from rich.console import Console

from edge.sim.view import LineView

NAMES = ["intake-1", "laser-1", "printer-1", "transfer-1", "inspection-1", "pickup-1"]
KINDS = ["intake", "laser", "printer", "transfer", "inspection", "pickup"]


def state(job: str, status: str, steps: list[str], events: int, progress: int | None = None,
          reason: str = "") -> dict:
    """A job state shaped like JobState.to_json: one step per kind, in line order."""
    return {"job": job, "status": status, "events": events, "carrier": "T03", "position": "printer",
            "steps": [{"step": kind, "status": s, "node": "", "attempts": 1 if s != "pending" else 0,
                       "reason": reason if s == "failed" else "", "on_route": True,
                       "progress": progress if s == "running" else None, "started_ms": 0, "ended_ms": 0}
                      for kind, s in zip(KINDS, steps, strict=True)]}


def status(state: str = "idle", text: str | None = None, connected: bool = True, outbox: int = 0,
           job: str | None = None) -> dict:
    """A station status shaped like Node.get_status."""
    station = {"mode": "auto", "message": {"text": text, "ok": True, "at": 0.0} if text else None}
    return {"node": "laser-1", "kind": "laser", "state": state, "reason": None, "job": job, "outbox": outbox,
            "mqtt": {"connected": connected, "session": 1}, "station": station}


def lines(out: io.StringIO) -> list[str]:
    return out.getvalue().splitlines()


def rendered(view: LineView) -> str:
    console = Console(record=True, width=120, file=io.StringIO())
    console.print(view.render())
    return console.export_text()


@pytest.fixture
def plain() -> tuple[LineView, io.StringIO]:
    out = io.StringIO()  # not a TTY: the view picks plain lines by itself
    return LineView(NAMES, out=out), out


def test_a_pipe_gets_plain_lines_and_a_tty_the_live_view() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    assert LineView(NAMES, out=io.StringIO()).plain
    assert not LineView(NAMES, out=Tty()).plain
    assert LineView(NAMES, out=Tty(), live=False).plain


def test_a_job_line_is_printed_once_per_change(plain: tuple[LineView, io.StringIO]) -> None:
    view, out = plain
    view.job(state("V12345A", "in_progress", ["done", "running", "pending", "pending", "pending", "pending"], 5))
    view.job(state("V12345A", "in_progress", ["done", "running", "pending", "pending", "pending", "pending"], 6,
                   progress=40))  # progress is not in the line: no news
    view.job(state("V12345A", "in_progress", ["done", "done", "running", "pending", "pending", "pending"], 8))
    assert lines(out) == [
        "  [dashboard] job V12345A in_progress intake:done  laser:working  printer:-  transfer:-  inspection:-"
        "  pickup:-",
        "  [dashboard] job V12345A in_progress intake:done  laser:done  printer:working  transfer:-  "
        "inspection:-  pickup:-"]


def test_an_older_retained_state_is_ignored(plain: tuple[LineView, io.StringIO]) -> None:
    view, out = plain
    view.job(state("V12345A", "in_progress", ["done", "done", "running", "pending", "pending", "pending"], 9))
    view.job(state("V12345A", "waiting", ["pending"] * 6, 2))  # the broker restarted with an old copy
    view.job(state("V12345A", "in_progress", ["done", "done", "done", "running", "pending", "pending"], 9))
    assert len(lines(out)) == 2 and "waiting" not in out.getvalue()
    assert "transfer:working" in lines(out)[1]
    assert "waiting" not in rendered(view)  # the live table keeps the newest state too


def test_a_failed_job_shows_its_reason(plain: tuple[LineView, io.StringIO]) -> None:
    view, out = plain
    view.job(state("V12345C", "failed", ["done", "done", "failed", "pending", "pending", "pending"], 12,
                   reason="printer-1 lost power mid-print"))
    assert lines(out) == ["  [dashboard] job V12345C failed      intake:done  laser:done  printer:FAILED  "
                          "transfer:-  inspection:-  pickup:- (printer-1 lost power mid-print)"]


def test_station_messages_down_and_up_again(plain: tuple[LineView, io.StringIO]) -> None:
    view, out = plain
    view.station("laser-1", status("busy", "engraving V12345A", job="V12345A"))
    view.station("laser-1", status("busy", "engraving V12345A", job="V12345A", outbox=2))  # same text
    view.station("laser-1", {"state": "down"})
    view.station("laser-1", {"state": "down"})
    view.station("laser-1", status("starting"))  # back, its screen blank yet
    view.station("laser-1", status("idle", "engraving V12345A"))  # the same text as before the cut
    view.station("laser-1", status("idle", "ready for the next stand"))
    assert lines(out) == ["   [laser-1] engraving V12345A", "   [laser-1] DOWN", "   [laser-1] up again",
                          "   [laser-1] ready for the next stand"]


def test_say_chaos_and_operator_lines_and_a_silent_visitor(plain: tuple[LineView, io.StringIO]) -> None:
    view, out = plain
    view.visitor("V12345A", "Maëlle", "blue", "Maëlle")
    view.say("== The hub broker loses power [and the stations carry on]")
    view.chaos("power", "laser-1 power cut (kill -9)")
    view.operator("retry V12345C at printer-1 (power cut)")
    view.close()
    view.close()
    assert lines(out) == ["== The hub broker loses power [and the stations carry on]",
                          "  !! chaos[power] laser-1 power cut (kill -9)",
                          "  >> operator: retry V12345C at printer-1 (power cut)"]


class SlowOut(io.StringIO):
    """A stream that lets other threads run in the middle of a write, as a real pipe may."""

    def write(self, s: str) -> int:
        for i in range(0, len(s), 7):
            super().write(s[i:i + 7])
            time.sleep(0)
        return len(s)


def test_lines_from_many_threads_are_never_interleaved() -> None:
    out = SlowOut()
    view = LineView(NAMES, out=out)
    rounds = 60

    def jobs(t: int) -> None:
        for i in range(rounds):
            steps = ["done" if k < i % 6 else "pending" for k in range(6)]
            view.job(state(f"V{t:05d}A", "in_progress", steps, i + 1))

    def stations(t: int) -> None:
        for i in range(rounds):
            view.station(NAMES[t % 6], status("busy", f"message {i} from thread {t}"))

    def narrative(t: int) -> None:
        for i in range(rounds):
            view.say(f"== narrative line {i} from thread {t}, long enough to be cut in several writes")

    threads = [threading.Thread(target=f, args=(t,)) for t, f in enumerate([jobs, stations, narrative] * 3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    whole = re.compile(r"  \[dashboard\] job V\d{5}A in_progress (intake:\S+  laser:\S+  printer:\S+  "
                       r"transfer:\S+  inspection:\S+  pickup:\S+)"
                       r"|   \[\w+-1\] message \d+ from thread \d"
                       r"|== narrative line \d+ from thread \d, long enough to be cut in several writes")
    got = lines(out)
    assert [line for line in got if not whole.fullmatch(line)] == []
    assert sum(line.startswith("== narrative") for line in got) == 3 * rounds
    assert sum(" message " in line for line in got) == 3 * rounds


def test_render_shows_stations_visitors_progress_failures_and_chaos() -> None:
    view = LineView(NAMES, out=io.StringIO())
    view.visitor("V12345A", "Maëlle", "blue", "Maëlle")
    view.visitor("V12345C", "Noël", "black", "[bold]Noël[/]")
    view.job(state("V12345A", "in_progress", ["done", "done", "skipped", "pending", "pending", "pending"], 14))
    view.job(state("V12345C", "failed", ["done", "done", "failed", "pending", "pending", "pending"], 12,
                   reason="[printer] lost power"))
    view.job(state("V12345D", "completed", ["done"] * 6, 30))
    view.station("printer-1", status("busy", "printing V12345A", connected=False, outbox=4, job="V12345A"))
    view.station("laser-1", {"state": "down"})
    view.chaos("power", "laser-1 power cut (kill -9)")
    view.chaos("broker", "the hub broker restarted", recovered=True)
    view.operator("retry V12345C at printer-1 (power cut)")
    text = rendered(view)
    for name in NAMES:
        assert name in text
    assert "Maëlle" in text and "Noël" in text
    assert re.search(r"V12345A .*Maëlle .*blue .* 3/6 ", text)  # done, done, skipped: half the route
    assert "██████░░░░░░ 3/6" in text
    assert "[printer] lost power" in text  # a reason is shown as is, never read as markup
    assert "V12345D" not in text and "1 completed" in text  # closed jobs are counted, not listed
    assert re.search(r"printer-1 +busy +offline 4 queued +V12345A +printing V12345A", text)
    assert re.search(r"laser-1 +down", text)
    assert re.search(r"\+\d+\.\ds chaos\[power\] +laser-1 power cut \(kill -9\)", text)
    assert re.search(r"\+\d+\.\ds operator +retry V12345C at printer-1 \(power cut\)", text)
    assert "visitors 3  completed 1  failed 1  open 1  faults 1" in text  # the restart is no fault


def test_render_a_running_step_adds_its_percent() -> None:
    view = LineView(NAMES, out=io.StringIO())
    view.job(state("V12345A", "in_progress", ["done", "done", "running", "pending", "pending", "pending"], 9,
                   progress=50))
    text = rendered(view)
    assert "printer 50%" in text
    assert "█████░░░░░░░ 2/6" in text  # 2.5 of 6 steps: 5 of 12 cells


def test_render_lists_the_newest_open_jobs_first_and_counts_the_rest() -> None:
    view = LineView(NAMES, out=io.StringIO())
    for i in range(20):
        view.job(state(f"V{i:05d}A", "waiting", ["pending"] * 6, 1))
    text = rendered(view)
    assert text.index("V00019A") < text.index("V00018A")
    assert "V00006A" in text and "V00005A" not in text
    assert "6 older open jobs not shown" in text


def test_odd_input_never_raises(caplog: pytest.LogCaptureFixture) -> None:
    out = io.StringIO()
    view = LineView(NAMES, out=out)
    with caplog.at_level(logging.WARNING, logger="edge.sim.view"):
        view.job(None)  # type: ignore[arg-type]
        view.job({})
        view.job({"job": "V1", "steps": None, "events": None})
        view.job({"job": "V2", "status": None, "events": "many", "steps": [None, {"status": ["odd"]}, 3]})
        view.job({"job": "V3", "steps": [{"step": "laser", "status": "running", "progress": float("nan")}]})
        view.station("laser-1", None)  # type: ignore[arg-type]
        view.station("laser-1", {"state": "busy"})  # no "station", no "mqtt", no "outbox"
        view.station("printer-1", {"state": "idle", "station": {"message": None}, "mqtt": None, "outbox": None})
        view.station("pickup-1", {"state": "fault", "reason": None, "station": "not a dict"})
        view.station(None, {"state": "down"})  # type: ignore[arg-type]
        view.visitor("V2", None, "not-a-colour", None)  # type: ignore[arg-type]
        view.chaos(None, None)  # type: ignore[arg-type]
        view.operator(None)  # type: ignore[arg-type]
        view.say(None)  # type: ignore[arg-type]
        text = rendered(view)
    assert caplog.records == []  # handled, not swallowed by the view's last net
    assert "V2" in text and "not-a-colour" in text and "laser-1" in text
    assert "  [dashboard] job V1" in lines(out)


def test_a_closed_stream_does_not_stop_the_demo() -> None:
    out = io.StringIO()
    view = LineView(NAMES, out=out)
    out.close()
    view.say("the terminal went away")
    view.chaos("node", "laser-1 killed")
    assert view.faults == 1


def test_the_live_view_prints_the_narrative_and_leaves_its_last_frame() -> None:
    out = io.StringIO()
    view = LineView(NAMES, out=out, live=True).start()
    view.visitor("V12345A", "Maëlle", "green", "Maëlle")
    view.job(state("V12345A", "in_progress", ["done", "running", "pending", "pending", "pending", "pending"], 4))
    view.say("== The hub broker loses power")
    view.chaos("broker", "hub broker killed")
    threads = [threading.Thread(target=view.render) for _ in range(4)]  # as the Live's own thread does
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    view.close()
    view.close()
    text = out.getvalue()
    assert "== The hub broker loses power" in text
    assert "[dashboard]" not in text  # the table, not log lines
    assert "Maëlle" in text and "hub broker killed" in text and "pickup-1" in text
