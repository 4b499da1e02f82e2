"""The hardware seam under gpiozero's MockFactory, real ptys and real FIFOs."""

from __future__ import annotations

import os
import pty
from pathlib import Path

import pytest
from PIL import Image
from trailer import Posted

from edge.config import HardwareConfig
from edge.hw import Board, HardwareError, SafetyInterlock


def out(name: str, pin: int, safe: bool = False, active_high: bool = True) -> HardwareConfig:
    return HardwareConfig(name=name, type="digital_output", pin=pin, safe_state=safe, active_high=active_high)


def estop(pin: int = 4) -> HardwareConfig:
    return HardwareConfig(name="estop", type="emergency_stop", pin=pin)




@pytest.fixture
def board_of(monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    boards: list[Board] = []

    def make(*devices: HardwareConfig, post=None) -> Board:
        board = Board({d.name: d for d in devices}, post or Posted())
        board.start()
        boards.append(board)
        return board

    yield make
    for board in boards:
        board.close()


def level(board: Board, pin: int) -> bool:
    return bool(board.factory.pin(pin).state)


def test_outputs_start_in_their_safe_state_at_the_pin_level(board_of):
    board = board_of(out("conveyor", 17), out("gripper", 27, safe=True, active_high=False))
    assert level(board, 17) is False
    assert level(board, 27) is False  # active-low output, safe "on" = pin driven low
    assert board.outputs["gripper"].value is True


def test_emergency_stop_forces_outputs_safe_before_the_loop_hears(board_of):
    posted = Posted()
    board = board_of(out("conveyor", 17), estop(4), post=posted)
    board.drive("conveyor", True)
    assert level(board, 17) is True
    board.factory.pin(4).drive_high()  # loop opened: button pressed or wire cut
    assert level(board, 17) is False  # already safe: driven from the input callback itself
    assert posted.wait("safety") == [{"device": "estop", "tripped": True}]
    assert board.tripped() == ["estop"]


def test_output_refused_while_emergency_stop_is_open_then_allowed_again(board_of):
    board = board_of(out("conveyor", 17), estop(4))
    board.factory.pin(4).drive_high()
    with pytest.raises(SafetyInterlock, match="estop"):
        board.drive("conveyor", True)
    assert level(board, 17) is False
    board.drive("conveyor", False)  # going to the safe state is always allowed
    board.factory.pin(4).drive_low()
    board.drive("conveyor", True)
    assert level(board, 17) is True


def test_two_devices_claiming_one_pin_fail_at_start_naming_both(board_of):
    with pytest.raises(HardwareError) as err:
        board_of(out("conveyor", 17), HardwareConfig(name="sensor", type="digital_input", pin=17))
    assert "[hardware.conveyor]" in str(err.value) and "[hardware.sensor]" in str(err.value)


def test_a_port_and_its_by_id_link_are_one_port(board_of, tmp_path):
    master, slave = pty.openpty()
    try:
        real = os.ttyname(slave)
        link = tmp_path / "usb-fabrique_io_board-if00"
        link.symlink_to(real)
        with pytest.raises(HardwareError) as err:
            board_of(HardwareConfig(name="grbl", type="serial", port=real),
                     HardwareConfig(name="board", type="serial", port=str(link)))
        assert "[hardware.grbl]" in str(err.value) and "[hardware.board]" in str(err.value)
    finally:
        os.close(master)
        os.close(slave)


def test_missing_serial_device_is_a_fault_with_a_reason(board_of):
    board = board_of(HardwareConfig(name="grbl", type="serial", port="/dev/serial/by-id/not-plugged"))
    assert "not found (is the device plugged in?)" in board.faults["grbl"]
    assert board.status()["grbl"]["open"] is False


def test_serial_device_on_a_real_pty_opens(board_of):
    master, slave = pty.openpty()
    try:
        board = board_of(HardwareConfig(name="grbl", type="serial", port=os.ttyname(slave)))
        assert board.faults == {}
        board.serial["grbl"].handle.write(b"?")
        assert os.read(master, 1) == b"?"
    finally:
        os.close(master)
        os.close(slave)


def test_scanner_reading_a_fifo_posts_each_code(board_of, tmp_path):
    fifo = tmp_path / "scanner"
    os.mkfifo(fifo)
    posted = Posted()
    board_of(HardwareConfig(name="scanner", type="scanner", source="file", path=fifo), post=posted)
    with open(fifo, "w") as w:
        w.write("FAB1.first\nFAB1.sec")
        w.flush()
        w.write("ond\n\n")
    scans = posted.wait("scan", 2)
    assert [s["text"] for s in scans] == ["FAB1.first", "FAB1.second"]


def test_scanner_on_a_serial_pty_posts_codes(board_of):
    master, slave = pty.openpty()
    try:
        posted = Posted()
        board_of(HardwareConfig(name="scanner", type="scanner", source="serial", port=os.ttyname(slave),
                                baudrate=9600), post=posted)
        os.write(master, b"ORDER-1\r\nORDER-2\r")
        assert [s["text"] for s in posted.wait("scan", 2)] == ["ORDER-1", "ORDER-2"]
    finally:
        os.close(master)
        os.close(slave)


def test_file_camera_cycles_through_its_images(board_of, tmp_path):
    for i, colour in enumerate(["red", "blue"]):
        Image.new("RGB", (32, 24), colour).save(tmp_path / f"frame{i}.png")
    board = board_of(HardwareConfig(name="camera", type="camera", source="file", path=tmp_path))
    cam = board.cameras["camera"]
    frames = [cam.capture() for _ in range(3)]
    assert all(f.shape == (24, 32, 3) and str(f.dtype) == "uint8" for f in frames)  # RGB arrays, any source
    assert [tuple(int(v) for v in f[0, 0]) for f in frames] == [(255, 0, 0), (0, 0, 255), (255, 0, 0)]
    assert cam.status()["frames"] == 3 and cam.status()["error"] is None


def test_a_camera_that_cannot_give_a_frame_says_why_and_recovers(board_of, tmp_path):
    board = board_of(HardwareConfig(name="camera", type="camera", source="file", path=tmp_path))
    cam = board.cameras["camera"]
    (tmp_path / "broken.png").write_bytes(b"not a picture")
    with pytest.raises(HardwareError, match=r"\[hardware.camera\] cannot read broken.png"):
        cam.capture()
    assert "broken.png" in cam.status()["error"]
    (tmp_path / "broken.png").unlink()
    Image.new("RGB", (8, 8), "green").save(tmp_path / "ok.png")
    assert cam.capture().shape == (8, 8, 3) and cam.status()["error"] is None


def test_a_v4l2_camera_that_is_not_there_is_a_fault_naming_its_device(board_of, tmp_path):
    board = board_of(HardwareConfig(name="usbcam", type="camera", source="v4l2", path=tmp_path / "video9"))
    assert "video9: no such camera (unplugged?)" in board.faults["usbcam"]
    with pytest.raises(HardwareError, match="video9"):
        board.cameras["usbcam"].capture()  # tried again at each capture, still not there


def test_picamera2_off_a_pi_is_a_fault_not_a_crash(board_of):
    board = board_of(HardwareConfig(name="camera", type="camera", source="picamera2"))
    assert "picamera2 is not installed" in board.faults["camera"]


def test_closing_the_board_leaves_outputs_safe(board_of):
    board = board_of(out("laser_enable", 23), out("gripper", 27, safe=True, active_high=False))
    board.drive("laser_enable", True)
    board.drive("gripper", False)
    factory = board.factory
    board.close()
    assert factory.pin(23).states[-1].state == 0
    assert factory.pin(27).states[-1].state == 0


def test_unknown_pin_factory_is_named(monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "gpio-magic")
    board = Board({"fan": out("fan", 17)}, Posted())
    with pytest.raises(HardwareError, match="unknown pin factory 'gpio-magic'"):
        board.start()


def test_file_camera_with_missing_directory_is_a_fault(board_of, tmp_path):
    board = board_of(HardwareConfig(name="camera", type="camera", source="file", path=Path(tmp_path / "no")))
    assert "is not a directory of images" in board.faults["camera"]
