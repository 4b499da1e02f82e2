"""Scanners on real parts: a pty for a USB-CDC scanner, a FIFO of input_event structs for a
keyboard scanner, QR images made with segno in a file camera's folder.

No virtual keyboard: this machine's kernel has no uinput driver (no /dev/uinput, no entry
223 in /proc/misc, no modules to load; a node made with `mknod c 10 223` opens with ENODEV),
so the evdev source reads the kernel's own 24-byte `llHHi` structs from a FIFO instead. The
grab ioctl fails there (ENOTTY), as it would on any non-input file: the scanner must carry on.
On a Pi, `evtest --grab` on the scanner's /dev/input/by-id node checks the real thing.
"""

from __future__ import annotations

import io
import os
import pty
import struct
import unicodedata
from pathlib import Path

import pytest
import segno
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image
from trailer import EXAMPLES, Posted

from edge.config import ConfigError, HardwareConfig, load_station
from edge.hw import Board
from edge.hw.keymap import KeyboardDecoder
from edge.hw.scanner import FLOOD_BURST, KeyboardScanner, LineSplitter, SerialScanner

BASE45 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:"

# What a US keyboard needs to type each character: (key code, Shift), from input-event-codes.h.
# Written out here, not taken from edge.hw.keymap, so the two tables check each other.
US = {
    **{d: (2 + i, False) for i, d in enumerate("123456789")}, "0": (11, False),
    **{c: (code, True) for c, code in zip(
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
        (30, 48, 46, 32, 18, 33, 34, 35, 23, 36, 37, 38, 50, 49, 24, 25, 16, 19, 31, 20, 22, 47, 17, 45, 21, 44),
        strict=True)},
    " ": (57, False), "$": (5, True), "%": (6, True), "*": (9, True), "+": (13, True),
    "-": (12, False), ".": (52, False), "/": (53, False), ":": (39, True),
    "t": (20, False), "r": (19, False), "a": (30, False), "y": (21, False), "_": (12, True),
    "?": (53, True), "=": (13, False), "&": (8, True), "#": (4, True),
}
ENTER, KPENTER, LEFTSHIFT, RIGHTSHIFT, F1, LEFTCTRL = 28, 96, 42, 54, 59, 29


def ev(type_: int, code: int, value: int) -> bytes:
    return struct.pack("llHHi", 1700000000, 0, type_, code, value)


def key(code: int, value: int) -> bytes:
    """One key event as a keyboard sends it: MSC_SCAN, EV_KEY, SYN_REPORT."""
    return ev(4, 4, 0x70000 + code) + ev(1, code, value) + ev(0, 0, 0)


def tap(code: int) -> bytes:
    return key(code, 1) + key(code, 0)


def typed(text: str, enter: int = ENTER, shift: int = LEFTSHIFT) -> bytes:
    """The events of a scanner typing `text` then Enter."""
    out = b""
    for char in text:
        code, shifted = US[char]
        out += (key(shift, 1) + tap(code) + key(shift, 0)) if shifted else tap(code)
    return out + (tap(enter) if enter else b"")


@pytest.fixture
def posted() -> Posted:
    return Posted()


@pytest.fixture
def board_of(posted):
    boards: list[Board] = []

    def make(*devices: HardwareConfig) -> Board:
        board = Board({d.name: d for d in devices}, posted)
        board.start()
        boards.append(board)
        return board

    yield make
    for board in boards:
        board.close()


def keyboard(path: Path) -> HardwareConfig:
    return HardwareConfig(name="scanner", type="scanner", source="evdev", path=path)


def writer(fifo: Path) -> int:
    """The write end of a FIFO the scanner already has open (so this never blocks)."""
    return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)


def no_control(text: str) -> bool:
    return all(unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in text)


# ---------------------------------------------------------------- keyboard (evdev) scanners

def test_a_keyboard_scanner_types_a_qr_payload_with_shifted_characters(board_of, posted, tmp_path):
    fifo = tmp_path / "usb-Netum_Scanner-event-kbd"
    os.mkfifo(fifo)
    board = board_of(keyboard(fifo))
    w = writer(fifo)
    os.write(w, typed("FE1:6BF $%*+-./:Z9") + typed("tray-07", shift=RIGHTSHIFT))
    os.close(w)
    assert [s["text"] for s in posted.wait("scan", 2)] == ["FE1:6BF $%*+-./:Z9", "tray-07"]
    status = board.scanners["scanner"].status()
    assert (status["grabbed"], status["fault"], status["rejected"]) == (False, None, 0)  # a FIFO cannot be grabbed


def test_every_base45_character_survives_a_keyboard_scanner():
    for char in BASE45:
        keys = KeyboardDecoder()
        results = []
        for chunk in struct.iter_unpack("llHHi", typed(char)):
            results.append(keys.event(*chunk[2:]))
        assert [r.text for r in results if r is not None] == [char], repr(char)


def test_a_whole_order_payload_alphabet_comes_through_in_one_code():
    got: list[str] = []
    scanner = KeyboardScanner(keyboard(Path("/dev/null")), lambda _name, text: got.append(text))
    scanner.feed(typed("FE1:" + BASE45.strip()))
    assert got == ["FE1:" + BASE45.strip()]


def test_a_keyboard_scanner_ignores_releases_and_auto_repeat():
    got: list[str] = []
    scanner = KeyboardScanner(keyboard(Path("/dev/null")), lambda _name, text: got.append(text))
    held = key(US["A"][0], 1) + key(US["A"][0], 2) * 5 + key(US["A"][0], 0)  # a stuck key repeating
    scanner.feed(key(LEFTSHIFT, 1) + held + key(LEFTSHIFT, 0) + tap(US["1"][0]) + tap(ENTER))
    assert got == ["A1"]


def test_keypad_digits_and_keypad_enter_end_a_code():
    got: list[str] = []
    scanner = KeyboardScanner(keyboard(Path("/dev/null")), lambda _name, text: got.append(text))
    scanner.feed(tap(79) + tap(80) + tap(74) + tap(82) + tap(KPENTER))  # KP1 KP2 KP- KP0
    assert got == ["12-0"]


def test_a_key_with_no_us_character_rejects_the_whole_code():
    got: list[str] = []
    scanner = KeyboardScanner(keyboard(Path("/dev/null")), lambda _name, text: got.append(text))
    scanner.feed(typed("TRAY-1", enter=0) + tap(F1) + typed("2"))
    scanner.feed(key(LEFTCTRL, 1) + tap(US["J"][0]) + key(LEFTCTRL, 0) + typed("3"))
    scanner.feed(typed("TRAY-4"))
    assert got == ["TRAY-4"]  # never "TRAY-12": a carrier code missing a key may be another carrier's
    assert scanner.status()["rejects"] == {"unmapped_key": 2}


def test_a_keyboard_scanner_unplugged_and_plugged_back_reports_again(board_of, posted, tmp_path):
    fifo = tmp_path / "usb-Netum_Scanner-event-kbd"
    os.mkfifo(fifo)
    scanner = board_of(keyboard(fifo)).scanners["scanner"]
    w = writer(fifo)
    os.write(w, typed("TRAY-01"))
    posted.wait("scan")
    os.write(w, typed("TRAY-", enter=0))  # the cable is pulled mid-code
    fifo.unlink()
    os.close(w)
    assert scanner.wait_for(lambda s: s["fault"] is not None)
    assert "(is it plugged in?)" in scanner.status()["fault"]
    os.mkfifo(fifo)  # plugged back in
    assert scanner.wait_for(lambda s: s["fault"] is None)
    w = writer(fifo)
    os.write(w, typed("TRAY-02"))
    os.close(w)
    assert [s["text"] for s in posted.wait("scan", 2)] == ["TRAY-01", "TRAY-02"]  # the half code is gone
    assert [e["fault"] is None for e in posted.of("device_fault")] == [False, True]


def test_a_keyboard_scanner_missing_at_start_is_a_fault_until_plugged_in(board_of, posted, tmp_path):
    fifo = tmp_path / "usb-Netum_Scanner-event-kbd"
    board = board_of(keyboard(fifo))
    assert board.faults["scanner"] == f"cannot open {fifo}: No such file or directory (is it plugged in?)"
    os.mkfifo(fifo)
    assert board.scanners["scanner"].wait_for(lambda s: s["fault"] is None)
    w = writer(fifo)
    os.write(w, typed("TRAY-03"))
    os.close(w)
    assert posted.wait("scan") == [{"device": "scanner", "text": "TRAY-03"}]


# ---------------------------------------------------------------- serial (USB-CDC) scanners

class Ttys:
    """Real pseudo-terminals: write to a master what a scanner would send on its USB-CDC port."""

    def __init__(self) -> None:
        self.fds: list[int] = []

    def open(self) -> tuple[int, str]:
        master, slave = pty.openpty()
        self.fds += [master, slave]
        return master, os.ttyname(slave)

    def hang_up(self, master: int) -> None:
        """The scanner is unplugged: its port goes away."""
        self.fds.remove(master)
        os.close(master)

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)


@pytest.fixture
def ttys():
    ttys = Ttys()
    yield ttys
    ttys.close()


def send(fd: int, data: bytes) -> None:
    while data:
        data = data[os.write(fd, data):]


def serial_scanner(port: str | Path) -> HardwareConfig:
    return HardwareConfig(name="scanner", type="scanner", source="serial", port=str(port), baudrate=9600)


def test_a_serial_scanner_ends_codes_on_cr_lf_or_crlf_even_split_across_reads(ttys, board_of, posted):
    master, port = ttys.open()
    scanner = board_of(serial_scanner(port)).scanners["scanner"]
    send(master, b"TRAY-1\r")
    posted.wait("scan")
    send(master, b"\nTRAY-2\nTRAY-3\r\n")  # the LF of the first CRLF came in a read of its own
    assert [s["text"] for s in posted.wait("scan", 3)] == ["TRAY-1", "TRAY-2", "TRAY-3"]
    assert scanner.status()["rejected"] == 0


def test_garbage_from_a_serial_scanner_is_counted_not_fatal(ttys, board_of, posted):
    master, port = ttys.open()
    scanner = board_of(serial_scanner(port)).scanners["scanner"]
    garbage = [b"\xff\xfeORDER\r\n", b"TRAY\x07-1\r\n", b"X" * 5000 + b"\r\n", b"Y" * 20000 + b"\n", b"\n"]
    for chunk in garbage + [b"TRAY-2\r\n"]:
        send(master, chunk)
    assert posted.wait("scan") == [{"device": "scanner", "text": "TRAY-2"}]
    status = scanner.status()
    assert status["rejects"] == {"not_utf8": 1, "control": 1, "too_long": 2, "empty": 1}
    assert (status["rejected"], status["scans"], status["fault"]) == (5, 1, None)


def test_a_flood_of_scans_is_cut_and_counted_not_queued(ttys, board_of, posted):
    master, port = ttys.open()
    scanner = board_of(serial_scanner(port)).scanners["scanner"]
    send(master, b"".join(b"TRAY-%03d\r\n" % i for i in range(300)))
    assert scanner.wait_for(lambda s: s["scans"] + s["rejected"] == 300)
    status = scanner.status()
    assert status["scans"] >= FLOOD_BURST and status["rejects"]["flood"] > 0
    assert len(posted.of("scan")) == status["scans"]


def test_a_serial_scanner_unplugged_is_a_fault_and_comes_back_on_its_by_id_link(ttys, board_of, posted, tmp_path):
    master, port = ttys.open()
    link = tmp_path / "usb-Honeywell_Imaging_Scanner-if00"
    link.symlink_to(port)
    scanner = board_of(serial_scanner(link)).scanners["scanner"]
    send(master, b"TRAY-1\r\n")
    posted.wait("scan")
    ttys.hang_up(master)
    assert scanner.wait_for(lambda s: s["fault"] is not None)
    assert str(link) in scanner.status()["fault"]
    master, port = ttys.open()  # plugged back: udev points the by-id link at the new port
    link.unlink()
    link.symlink_to(port)
    assert scanner.wait_for(lambda s: s["fault"] is None)
    send(master, b"TRAY-2\r\n")
    assert [s["text"] for s in posted.wait("scan", 2)] == ["TRAY-1", "TRAY-2"]


def test_garbage_in_a_scan_fifo_is_counted_not_fatal(board_of, posted, tmp_path):
    fifo = tmp_path / "scans"
    os.mkfifo(fifo)
    scanner = board_of(HardwareConfig(name="scanner", type="scanner", source="file", path=fifo)).scanners["scanner"]
    w = writer(fifo)
    os.write(w, b"\xc3(\nTRAY\x1b[2J\n \t\nTRAY-5\n")
    os.close(w)
    assert posted.wait("scan") == [{"device": "scanner", "text": "TRAY-5"}]
    assert scanner.status()["rejects"] == {"not_utf8": 1, "control": 1, "empty": 1}


# ---------------------------------------------------------------- camera scanners

def qr(text: str | bytes, scale: int = 4) -> Image.Image:
    buf = io.BytesIO()
    segno.make_qr(text, error="m").save(buf, kind="png", scale=scale, border=4)
    buf.seek(0)
    return Image.open(buf).convert("L")


def show(folder: Path, *images: Image.Image) -> None:
    """Put exactly these frames in front of the file camera (written aside, then moved in)."""
    for old in folder.glob("*.png"):
        old.unlink()
    for i, image in enumerate(images):
        image.save(folder / f"frame{i}.tmp", format="PNG")
        os.replace(folder / f"frame{i}.tmp", folder / f"frame{i}.png")


def blank() -> Image.Image:
    return Image.new("L", (160, 160), 255)


@pytest.fixture
def camera_board(board_of, tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()

    def make(*frames: Image.Image) -> tuple[Path, object]:
        show(folder, *frames)
        board = board_of(HardwareConfig(name="qr", type="scanner", source="camera", camera="overhead", interval_ms=20),
                         HardwareConfig(name="overhead", type="camera", source="file", path=folder))
        return folder, board.scanners["qr"]

    return make


def test_the_camera_reports_a_code_once_while_it_stays_in_view(camera_board, posted):
    _folder, scanner = camera_board(qr("FE1:6BF $%*+-./:"))
    assert scanner.wait_for(lambda s: s["frames"] >= 10)
    assert posted.texts() == ["FE1:6BF $%*+-./:"]
    assert scanner.status()["in_view"] == 1


def test_the_camera_reports_a_code_again_after_it_left_the_view(camera_board, posted):
    folder, scanner = camera_board(qr("TRAY-07"))
    posted.wait("scan")
    show(folder, blank())
    assert scanner.wait_for(lambda s: s["in_view"] == 0)
    show(folder, qr("TRAY-07"))
    posted.wait("scan", 2)
    assert posted.texts() == ["TRAY-07", "TRAY-07"]


def test_the_camera_reads_a_tray_code_and_a_visitor_qr_in_one_frame(camera_board, posted):
    tray, order = qr("TRAY-07"), qr("FE1:6BF $%*+-./:")
    frame = Image.new("L", (tray.width + order.width + 40, max(tray.height, order.height)), 255)
    frame.paste(tray, (0, 0))
    frame.paste(order, (tray.width + 40, 0))
    _folder, scanner = camera_board(frame)
    assert scanner.wait_for(lambda s: s["frames"] >= 5 and s["scans"] >= 2)
    assert sorted(posted.texts()) == ["FE1:6BF $%*+-./:", "TRAY-07"]


def test_a_camera_with_no_frames_is_a_scanner_fault_until_it_sees_again(camera_board, posted):
    folder, scanner = camera_board()
    assert scanner.wait_for(lambda s: s["fault"] is not None)
    assert scanner.status()["fault"].startswith("camera overhead: ")
    show(folder, qr("TRAY-09"))
    assert posted.wait("scan") == [{"device": "qr", "text": "TRAY-09"}]
    assert scanner.status()["fault"] is None


def test_a_qr_code_with_a_control_character_is_rejected_once_not_per_frame(camera_board, posted):
    _folder, scanner = camera_board(qr("TRAY\x07-1"))
    assert scanner.wait_for(lambda s: s["frames"] >= 8)
    assert scanner.status()["rejects"] == {"control": 1}
    assert posted.of("scan") == []


# ---------------------------------------------------------------- the station file

STATION = f"""\
[node]
id = "intake-1"
line = "demo"
line_file = "{EXAMPLES / 'line.toml'}"

[station]
kind = "inspection"

[hardware.overhead]
type = "camera"
source = "file"
path = "frames"
"""


def test_a_station_file_declares_keyboard_and_camera_scanners(tmp_path):
    path = tmp_path / "station.toml"
    path.write_text(STATION + """
[hardware.gun]
type = "scanner"
source = "evdev"
path = "/dev/input/by-id/usb-Netum_Scanner-event-kbd"

[hardware.qr]
type = "scanner"
source = "camera"
camera = "overhead"
interval_ms = 100
""")
    hw = load_station(path).hardware
    assert (hw["gun"].source, hw["gun"].path) == ("evdev", Path("/dev/input/by-id/usb-Netum_Scanner-event-kbd"))
    assert (hw["qr"].source, hw["qr"].camera, hw["qr"].interval_ms) == ("camera", "overhead", 100)


def test_a_camera_scanner_naming_a_missing_camera_is_a_located_error(tmp_path):
    path = tmp_path / "station.toml"
    path.write_text(STATION + """
[hardware.qr]
type = "scanner"
source = "camera"
camera = "overhed"
interval_ms = 5
path = "/dev/video0"
""")
    with pytest.raises(ConfigError) as err:
        load_station(path)
    line = path.read_text().splitlines().index('camera = "overhed"') + 1
    assert [str(i) for i in err.value.issues] == [
        f"{path}:{line}: [hardware.qr] camera: no camera device [hardware.overhed] in this file "
        "(cameras: overhead) (did you mean 'overhead'?)",
        f"{path}:{line + 1}: [hardware.qr] interval_ms: 5 is out of range 20..60000",
        f"{path}:{line + 2}: [hardware.qr] path: unknown key",
    ]


# ---------------------------------------------------------------- any bytes at all

@given(st.lists(st.binary(max_size=300), max_size=30))
def test_any_bytes_from_a_serial_scanner_never_raise_nor_post_a_control_character(chunks):
    got: list[str] = []
    scanner = SerialScanner(serial_scanner("/dev/null"), lambda _name, text: got.append(text))
    for chunk in chunks:
        scanner.feed(chunk)
    assert all(0 < len(text) <= 4096 and no_control(text) for text in got)


@given(st.lists(st.binary(max_size=300), max_size=30))
def test_any_bytes_from_a_keyboard_scanner_never_raise_nor_post_a_control_character(chunks):
    got: list[str] = []
    scanner = KeyboardScanner(keyboard(Path("/dev/null")), lambda _name, text: got.append(text))
    for chunk in chunks:
        scanner.feed(chunk)
    assert all(0 < len(text) <= 4096 and no_control(text) for text in got)


@given(st.binary(max_size=400), st.lists(st.integers(1, 50), max_size=20))
def test_where_the_reads_are_cut_never_changes_the_lines(data, cuts):
    whole, pieces = LineSplitter(limit=100), LineSplitter(limit=100)
    expected, got, pos = whole.feed(data), [], 0
    for cut in [*cuts, len(data)]:
        got += pieces.feed(data[pos:pos + cut])
        pos += cut
    assert got == expected


key_event = st.tuples(st.sampled_from([0, 1, 1, 1, 4, 17]), st.integers(0, 130) | st.integers(0, 0xFFFF),
                      st.sampled_from([0, 1, 1, 2]) | st.integers(-(2**31), 2**31 - 1))


@given(st.lists(key_event, max_size=200), st.integers(1, 64))
def test_any_key_events_never_raise_nor_post_a_control_character(events, cut):
    got: list[str] = []
    scanner = KeyboardScanner(keyboard(Path("/dev/null")), lambda _name, text: got.append(text))
    data = b"".join(ev(*e) for e in events)
    for i in range(0, len(data), cut):  # the device's reads may cut a struct anywhere
        scanner.feed(data[i:i + cut])
    assert all(0 < len(text) <= 4096 and no_control(text) for text in got)
    assert scanner.status()["scans"] == len(got)
