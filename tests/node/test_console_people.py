"""The console for people, at a real node (`edge run`, mock pins): its serial console on a real
pty (echo, line editing, history, completion, tables, questions, the PIN, bad input, the
port coming back), and `edge console` on its socket driven like a person types (pexpect)."""

from __future__ import annotations

import contextlib
import os
import pty
import random
import re
import select
import signal
import socket
import subprocess
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pytest
from trailer import ROOT, example_station, run_edge

from edge.control import hash_pin
from edge.sim.line import example_order, wait_until

PIN = "739251"
PIN_HASH = hash_pin(PIN, iterations=1000)  # cheap for the tests; the shipped default is 200 000
ANSI = re.compile(r"\x1b(\[[0-9;?]*[ -/]*[@-~]|\][^\x07]*\x07|[()][0-9A-Za-z]|[=>78DEHM])")
PROMPT = r"transfer-1 \[auto\|\w+\]>"
BANNER = "console of transfer-1 (transfer): type help, Tab completes, Up recalls"


class Terminal:
    """The far end of the serial cable: a real pty whose output a thread keeps reading
    (`forward`: also hand it to another pty, as a null-modem cable would)."""

    def __init__(self) -> None:
        self.master, self.slave = pty.openpty()
        tty.setraw(self.master, termios.TCSANOW)  # not TCSAFLUSH: a node quick to reopen has written already
        self.path = os.ttyname(self.slave)
        self.raw = bytearray()
        self.cond = threading.Condition()
        self.pos = 0  # how far `expect` has read, in the cleaned text
        self.forward: Callable[[bytes], None] | None = None
        self.closing = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.closing.is_set():
            try:
                ready, _, _ = select.select([self.master], [], [], 0.2)
                if not ready:
                    continue
                data = os.read(self.master, 65536)
            except (OSError, ValueError):
                return
            if not data:
                return
            with self.cond:
                self.raw += data
                self.cond.notify_all()
            if self.forward is not None:
                with contextlib.suppress(OSError):
                    self.forward(data)

    def type(self, data: str | bytes) -> None:
        data = data.encode() if isinstance(data, str) else data
        while data:
            data = data[os.write(self.master, data[:1024]):]

    def text(self) -> str:
        """What a person sees, roughly: escapes out, lines ended by LF."""
        with self.cond:
            raw = bytes(self.raw)
        return ANSI.sub("", raw.decode("utf-8", errors="replace")).replace("\r", "")

    def expect(self, pattern: str, timeout: float = 20) -> re.Match[str]:
        """Wait for `pattern` after what was expected last; read past it."""
        deadline = time.monotonic() + timeout
        while True:
            text = self.text()
            found = re.compile(pattern).search(text, self.pos)
            if found:
                self.pos = found.end()
                return found
            left = deadline - time.monotonic()
            assert left > 0, f"no {pattern!r} on the terminal; it shows:\n{text[self.pos:][-3000:]}"
            with self.cond:
                self.cond.wait(min(left, 0.2))

    def skip(self) -> None:
        """Forget what came so far (the next expect reads only newer output)."""
        time.sleep(0.3)
        self.pos = len(self.text())

    def run(self, line: str, answer: str, timeout: float = 20) -> str:
        """Type a line and Enter; wait for `answer`; return what was shown in between."""
        start = self.pos
        self.type(line + "\r")
        found = self.expect(answer, timeout)
        return self.text()[start:found.end()]

    def close(self) -> None:
        self.closing.set()
        self.thread.join(5)  # before the fds go: their numbers are soon another pty's
        for fd in (self.master, self.slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class Station:
    """One `edge run` of the example transfer station: its serial console on a pty reached
    through a symlink (so the port can "come back" as another pty), a socket, an operator PIN."""

    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.link = tmp / "console-tty"
        self.socket = tmp / "console.sock"
        self.log = tmp / "node.log"
        self.term = Terminal()
        self.link.symlink_to(self.term.path)
        station = example_station("transfer", tmp)
        text = station.read_text()
        text = text.replace('serial_port = "/dev/ttyAMA0"', f'serial_port = "{self.link}"')
        text = text.replace('socket = "/run/fabrique-edge/console.sock"',
                            f'socket = "{self.socket}"\npin_hash = "{PIN_HASH}"')
        station.write_text(text)
        self.station_file = station
        with open(self.log, "w") as log:  # at debug level: the PIN must not be in even that
            self.proc = subprocess.Popen([sys.executable, "-m", "edge", "run", "--config", str(station),
                                          "--log-level", "debug"], cwd=ROOT, stdout=subprocess.DEVNULL,
                                         stderr=log, env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
        self.term.expect(re.escape(BANNER))
        self.term.expect(PROMPT)
        wait_until(self.socket.exists, 20, "the console socket")

    def ask(self, line: str) -> str:
        """One line on the socket (the machine face): its reply line."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.connect(str(self.socket))
            s.sendall(line.encode() + b"\n")
            with s.makefile(encoding="utf-8") as replies:
                return replies.readline().rstrip("\n")

    def ask_as_operator(self, line: str) -> str:
        """`line` on the socket, logged in first on that connection: its reply line."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(20)
            s.connect(str(self.socket))
            s.sendall(f"login {PIN}\n{line}\n".encode())
            with s.makefile(encoding="utf-8") as replies:
                assert replies.readline().startswith("ok ")
                return replies.readline().rstrip("\n")

    def login(self) -> None:
        self.term.run("login", r"PIN:")
        self.term.run(PIN, r"logged in for")

    def replug(self) -> Terminal:
        """The cable out (both ends of the pty gone), then a new pty at the same path."""
        old = self.term
        old.close()
        self.term = Terminal()
        tmp_link = self.tmp / "console-tty.new"
        tmp_link.symlink_to(self.term.path)
        os.replace(tmp_link, self.link)
        return self.term

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        assert self.proc.wait(20) == 0
        assert time.monotonic() - started < 10  # the console stops promptly, port retries and all
        self.term.close()


@pytest.fixture(scope="module")
def station(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Station]:
    node = Station(tmp_path_factory.mktemp("people"))
    try:
        yield node
    finally:
        node.stop()
    assert PIN not in node.log.read_text()  # the PIN is never logged


@pytest.fixture
def term(station: Station) -> Terminal:
    """The serial terminal at a fresh prompt, whatever the test before left on it."""
    station.term.skip()
    station.term.run("\x03ping", r"pong")
    return station.term


def launch(station: Station, job: str) -> None:
    assert station.ask(f"launch {example_order(job)}").startswith("ok ")


# ---------------------------------------------------------------- typing

def test_the_serial_console_greets_with_a_prompt_showing_node_mode_and_state(station):
    text = station.term.text()
    assert text.startswith("fabrique-edge ") and BANNER in text
    assert re.search(PROMPT, text)
    status = station.ask("status")
    state = re.search(r'"state":"(\w+)"', status).group(1)
    assert f"transfer-1 [auto|{state}]>" in text


def test_backspace_ctrl_u_and_ctrl_c_edit_the_line_before_it_is_sent(station, term):
    station.login()
    # DEL (what a terminal's Backspace sends) takes back the typo; the drive runs, once asked
    shown = term.run("dirv\x7f\x7f\x7frive conveyor on", r"is everyone clear of it\?\n\[y/N\]")
    assert "> drive conveyor on" in shown and "unknown command" not in shown
    term.run("y", r"conveyor: on")
    term.run("\x15drive conveyor off", r"conveyor: off")  # Ctrl-U on an empty line: nothing
    # Ctrl-U drops what was typed before it
    shown = term.run("pinf and more words\x15ping", r"pong")
    assert "unknown command" not in shown and "> ping\n" in shown
    # Ctrl-C abandons the line: nothing is sent
    shown = term.run("drive conveyor on\x03ping", r"pong")
    assert "[y/N]" not in shown and "conveyor: on" not in shown
    assert '"conveyor":{"type":"digital_output","value":false' in station.ask("status")


def test_up_recalls_the_last_line_and_tab_completes_commands_and_devices(station, term):
    term.run("ping", r"pong")
    shown = term.run("\x1b[A", r"pong")  # Up, Enter: the same line again
    assert "> ping\n" in shown
    shown = term.run("hel\tdri\t", r"examples:")  # Tab completes the command, then a command's name
    assert "> help drive" in shown and "parameters:" in shown
    station.login()
    shown = term.run("dri\tcon\toff", r"conveyor: off")  # then a device's name
    assert "> drive conveyor off" in shown
    shown = term.run("drive conveyor o\t\x03ping", r"pong")  # on and off both start with o: nothing inserted
    assert "conveyor: o" not in shown


def test_tab_lists_the_choices_when_more_than_one_fits(term):
    term.type("s\t")
    listed = term.expect(r"skip\s+status\s+step\s+sync")
    assert listed
    term.run("\x03ping", r"pong")


# ---------------------------------------------------------------- what a person reads

def test_status_jobs_and_job_are_blocks_and_tables(station, term):
    shown = term.run("status", r"outbox\s+\d+ event")
    assert re.search(r"state\s+\w+", shown) and re.search(r"mode\s+auto", shown)
    assert re.search(r"\n\s+conveyor\s+(on|off)\s+output", shown + "\n")
    assert re.search(r"mqtt\s+off", shown) and "{" not in shown  # text, not JSON
    launch(station, "PEOPLE1")
    shown = term.run("jobs", r"open job\(s\)")
    assert re.search(r"job\s+status\s+position\s+next step\s+carrier", shown)
    assert re.search(r"PEOPLE1\s+\w+", shown)
    shown = term.run("job PEOPLE1", r"(?s)step\s+status\s+node\s+tries.*?pickup")
    assert "job PEOPLE1:" in shown and "keyring" in shown
    shown = term.run("job NOPE", r"error: job: no job 'NOPE' on this node")


def test_help_is_an_aligned_list_and_tells_one_command(term):
    shown = term.run("help", r"help <command> tells one")
    assert re.search(r"\n  drive <device> <value>\s+\* set an output", shown)  # *: at the station only
    assert re.search(r"\n  ping\s{2,}check the node answers", shown)
    assert "* at the station only" in shown
    shown = term.run("help drive", r"needs the PIN")
    assert "drive <device> <value>" in shown
    assert re.search(r"parameters:\n\s+device\s+output name\n\s+value\s+on or off", shown)
    assert "examples:\n  drive conveyor on" in shown and "asks to confirm" in shown


def test_a_typo_gets_did_you_mean(term):
    term.run("stauts", r"error: unknown command 'stauts'; did you mean 'status'\? \(try 'help'\)")


# ---------------------------------------------------------------- questions and the PIN

def test_a_motion_output_asks_first_and_no_means_not_done(station, term):
    station.login()
    term.run("drive conveyor on", r"\ndrive conveyor on moves it: is everyone clear of it\?\n\[y/N\]")
    shown = term.run("n", r"not done")
    assert "repeat with --force" not in shown
    assert '"conveyor":{"type":"digital_output","value":false' in station.ask("status")
    term.run("drive conveyor on", r"\[y/N\]")
    term.run("yes", r"conveyor: on")
    term.run("drive conveyor off", r"conveyor: off")  # back to safe: nothing to ask


def test_cancel_and_override_ask_first(station, term):
    launch(station, "PEOPLE2")
    station.login()
    term.run("cancel PEOPLE2 visitor left",
             r"\ncancel job PEOPLE2 with \d step\(s\) not done \(intake, laser, inspection, pickup\)\?\n\[y/N\]")
    term.run("", r"not done")  # Enter alone: no
    term.run("override PEOPLE2 laser done by hand", r"whatever the station says\?\n\[y/N\]")
    term.run("\x03", r"not done")  # Ctrl-C: no
    term.run("cancel PEOPLE2 visitor left", r"\[y/N\]")
    term.run("y", r"job PEOPLE2: cancelled")


def test_the_pin_is_asked_hidden_and_never_shown_nor_recalled(station, term):
    term.run("logout", r"logged out")
    term.run("drive conveyor off", r"needs the operator PIN.*\n(.*\n)*?PIN:")
    shown = term.run(PIN, r"conveyor: off")  # logged in, then the command ran
    assert "logged in for" in shown
    term.run("logout", r"logged out")
    term.run("login", r"PIN:")
    term.run("0000", r"error: login: wrong PIN")
    term.run("login", r"PIN:")
    term.run("\x03", r"not done")
    station.login()
    term.run("\x1b[A\x1b[A\x03ping", r"pong")  # Up recalls `login`, never the PIN
    assert PIN not in station.term.text()


# ---------------------------------------------------------------- faces

def test_at_machine_and_at_people_switch_the_serial_face(term):
    term.run("@machine", r'ok \{"face":"machine"\}\n')
    shown = term.run("ping", r'ok "pong"\n')
    assert "> ping" not in shown  # no echo, no prompt: for a program
    term.run("stauts", r"error unknown command 'stauts'")
    term.run("@people", r'ok \{"face":"people"\}\n.*' + re.escape(BANNER) + r"\n" + PROMPT)
    term.run("ping", r"> ping\npong")


def test_edge_console_port_talks_to_the_serial_console_through_a_cable(term):
    """`edge console --port` at the other end of a null-modem cable (two ptys joined)."""
    master, slave = pty.openpty()  # the laptop's side: the client opens its slave
    tty.setraw(master)
    done = threading.Event()

    def to_node() -> None:
        while not done.is_set():
            try:
                ready, _, _ = select.select([master], [], [], 0.1)
                data = os.read(master, 4096) if ready else b""
            except OSError:
                return
            if data:
                term.type(data)

    pump = threading.Thread(target=to_node, daemon=True)
    pump.start()
    term.forward = lambda data: os.write(master, data)
    try:
        result = run_edge("console", "--port", os.ttyname(slave), "-c", "status", timeout=60)
    finally:
        term.forward = None
        done.set()
        pump.join(5)
        os.close(master)
        os.close(slave)
    assert result.returncode == 0, result.stderr
    assert re.search(r"mode\s+auto", result.stdout) and "devices:" in result.stdout
    term.expect(re.escape(BANNER))  # it left the serial console to people again
    term.run("ping", r"> ping\npong")


# ---------------------------------------------------------------- bad input never hurts

def test_garbage_escapes_a_long_line_and_a_paste_are_each_answered(station, term):
    rng = random.Random(7)
    junk = bytes(rng.randrange(0x20, 0x100) for _ in range(3000)).replace(b"\x7f", b"")
    escapes = b"\x1b[31m\x1b[2J\x1b]0;title\x07\x1b[?1049h\x1b[6n\x1b[999;999R\x1bOP\x1b[15~"
    term.type(junk + escapes + b"\x00\x01\x02\x05\x06\x0b\x0e\x0f")
    term.type(b"\x03\x03")
    term.run("ping", r"pong")
    shown = term.run("x" * 10_000, r"error: line too long \(10000 characters, at most 1024\)", timeout=60)
    assert shown.count("error:") == 1
    before = term.text().count("pong")
    term.type("ping\r" * 500)
    wait_until(lambda: term.text().count("pong") >= before + 500, 60, "500 answers")
    term.skip()
    term.run("ping", r"pong")
    assert term.text().count("pong") == before + 501
    assert station.proc.poll() is None and station.ask("ping") == 'ok "pong"'


def test_the_socket_machine_face_shrugs_off_bad_input(station):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(20)
        s.connect(str(station.socket))
        s.sendall(b"\x00\xff\xfe\x1b[2J nonsense\n" + b"y" * 10_000 + b"\n# a comment\n\nping\n" +
                  b"job\njob a b c\njob 'unclosed\nping\n")
        with s.makefile(encoding="utf-8", errors="replace") as replies:
            lines = [replies.readline().rstrip("\n") for _ in range(7)]
    assert lines[0].startswith("error unknown command")
    assert lines[1].startswith("error line too long")
    assert lines[2] == 'ok "pong"'
    assert lines[3] == "error job: missing <job>; usage: job <job>"
    assert lines[4] == "error too many arguments; usage: job <job>"
    assert lines[5].startswith("error cannot read the line")
    assert lines[6] == 'ok "pong"'


# ---------------------------------------------------------------- the cable out and in again

def test_the_serial_port_comes_back_after_the_cable_was_out(station):
    term = station.replug()
    term.expect(re.escape(BANNER), timeout=20)  # greeted again on the new pty
    term.expect(PROMPT)
    term.run("ping", r"pong")
    term.run("drive conveyor off", r"needs the operator PIN")  # a new session: logged out
    term.run("\x03", r"not done")
    log = station.log.read_text()
    assert log.count("opening it again when it comes back") == 1 and "is back" in log


# ---------------------------------------------------------------- edge console

def spawn_console(station: Station, home: Path, *args: str) -> pexpect.spawn:
    return pexpect.spawn(sys.executable, ["-m", "edge", "console", "--socket", str(station.socket), *args],
                         cwd=str(ROOT), env={**os.environ, "HOME": str(home), "TERM": "xterm"},
                         encoding="utf-8", timeout=20, dimensions=(24, 120))


def test_edge_console_on_the_socket_for_people(station, tmp_path):
    child = spawn_console(station, tmp_path)
    try:
        child.expect(r"console of transfer-1 \(transfer\) at .*: type help")
        child.expect(PROMPT)
        child.sendline("ping")
        child.expect("pong")
        child.expect(PROMPT)
        child.send("hel\tdri\t\r")  # Tab completes a command, then a command's name
        child.expect(r"parameters:")
        child.expect(r"needs the PIN")
        child.expect(PROMPT)
        child.send("jo\t\t")
        child.expect(r"job\s+jobs")  # both fit: listed
        child.send("s\r")
        child.expect(r"(no open jobs|open job\(s\))")
        child.expect(PROMPT)
        child.sendline("drive conveyor on")  # the socket's own session: the PIN, then the question
        child.expect(r"needs the operator PIN")
        child.expect(r"PIN:")
        child.sendline(PIN)
        child.expect(r"logged in for")
        child.expect(r"is everyone clear of it\?[\s\S]*?\[y/N\]")
        child.sendline("n")
        child.expect("not done")
        child.expect(PROMPT)
        child.sendline("stauts")
        child.expect(r"did you mean 'status'")
        child.send("\x04")  # Ctrl-D leaves
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0
    history = (tmp_path / ".fabrique-edge-console-history").read_text()
    assert "ping" in history and PIN not in history


def test_edge_console_runs_one_command_and_says_when_there_is_no_node(station, tmp_path):
    ok = run_edge("console", "--socket", str(station.socket), "-c", "status", env={"HOME": str(tmp_path)})
    assert ok.returncode == 0, ok.stderr
    assert re.search(r"node\s+transfer-1 \(transfer\)", ok.stdout) and "devices:" in ok.stdout
    bad = run_edge("console", "--socket", str(station.socket), "-c", "stauts", env={"HOME": str(tmp_path)})
    assert bad.returncode == 1 and "error: unknown command 'stauts'; did you mean 'status'?" in bad.stdout
    asks = run_edge("console", "--socket", str(station.socket), "-c", "drive conveyor on", input="",
                    env={"HOME": str(tmp_path)})
    assert asks.returncode == 1 and "PIN: (not asked: no terminal)" in asks.stdout and "not done" in asks.stdout
    by_config = run_edge("console", "--config", str(station.station_file), "-c", "ping",
                         env={"HOME": str(tmp_path)})
    assert by_config.returncode == 0 and by_config.stdout.strip() == "pong"
    piped = run_edge("console", "--socket", str(station.socket), input="ping\njobs\n", env={"HOME": str(tmp_path)})
    assert piped.returncode == 0 and piped.stdout.startswith("pong\n")

    missing = run_edge("console", "--socket", str(tmp_path / "nope.sock"), "-c", "status")
    assert missing.returncode == 2
    assert f"edge console: no console socket at {tmp_path / 'nope.sock'}: is the node running" in missing.stderr
    left_behind = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.bind(str(left_behind))  # bound, never listening: what a killed node leaves
    refused = run_edge("console", "--socket", str(left_behind), "-c", "status")
    assert refused.returncode == 2 and "nothing answers on" in refused.stderr
    if os.geteuid() != 0:  # root reads any socket: the check needs an ordinary user
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o000)
        denied = run_edge("console", "--socket", str(locked / "console.sock"), "-c", "status")
        locked.chmod(0o700)
        assert denied.returncode == 2 and "permission denied on" in denied.stderr


# ---------------------------------------------------------------- the text, read back

def test_replies_read_back_from_the_machine_face_keep_what_they_ask():
    from edge.console_text import reply_from_wire, safe

    asks = reply_from_wire("error drive: drive conveyor on moves it: is everyone clear of it?; repeat with "
                           "--force to do it anyway")
    assert asks is not None and asks.ask == "confirm"
    assert reply_from_wire("error mode: this command needs the operator PIN: type `login` first").ask == "pin"
    assert reply_from_wire('ok {"a":1}').result == {"a": 1} and reply_from_wire("ok").result is None
    assert reply_from_wire("fabrique-edge 0.1.0 console of x (y): type help") is None  # a banner
    assert safe("note \x1b[2J\x07bell\nnext") == "note \\x1b[2J\\x07bell\nnext"  # never raw to a terminal


# ---------------------------------------------------------------- an operator's night

def test_an_operator_works_a_faulted_station_from_the_serial_terminal_alone(station, term):
    """Issue 13's "done when": from the serial terminal alone, the operator sees why the
    station faulted (its I/O board is not plugged in), takes manual mode, jogs the stuck tray
    out with the conveyor, skips the failed step of its job, and returns the station to auto.
    (The socket only sets the scene: a job whose transfer failed with the tray stuck.)"""
    launch(station, "JAM1")
    assert station.ask_as_operator("step JAM1 failed tray stuck at the laser beam").startswith("ok ")
    station.login()
    shown = term.run("status", r"outbox\s+\d+ event")
    assert re.search(r"state\s+fault: io_board: \S+ not found \(is the device plugged in\?\)", shown)  # why
    shown = term.run("job JAM1", r"(?s)step\s+status.*?\ntransfer-1 \[")
    assert re.search(r"transfer\s+failed", shown) and "tray stuck" in shown
    term.run("mode manual", r"transfer-1 \[manual\|\w+\]>")
    term.run("drive conveyor on", r"is everyone clear of it\?\n\[y/N\]")
    term.run("y", r"conveyor: on")  # the belt jogs the tray out
    term.run("drive conveyor off", r"conveyor: off")
    shown = term.run("skip JAM1 tray taken off the belt by hand", r"transfer-1 \[manual\|\w+\]>")
    assert "error" not in shown
    term.run("mode auto", r"transfer-1 \[auto\|\w+\]>")
    assert '"conveyor":{"type":"digital_output","value":false' in station.ask("status")
    job = station.ask("job JAM1")
    assert re.search(r'"step":"transfer","status":"skipped","node":"transfer-1"', job)
    from edge.store import Store

    store = Store.open(station.tmp / "transfer", readonly=True)  # the ledger names the console
    try:
        via = {e.type: e.data.get("via") for e in store.events_since({}) if e.job == "JAM1"}
    finally:
        store.close()
    assert via["step_skipped"] == f"serial:{station.link}" and via["step_failed"] == "socket"
