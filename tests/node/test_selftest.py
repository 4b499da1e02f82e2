"""`edge selftest` on real parts: a mosquitto running the shipped hub config, gpiozero's
MockFactory pins, a simulated GRBL laser on a pseudo-terminal, a camera on a folder of images,
a scanner on a file, and a ledger on disk."""

from __future__ import annotations

import json
import queue
import socket
from collections import namedtuple
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from mqttclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from PIL import Image
from trailer import EXAMPLES, ROOT, run_edge, running, wait_for

from edge import selftest
from edge.cli import main
from edge.config import load_line, load_station
from edge.node import Node
from edge.selftest import FAIL, OK, SKIP, WARN, Host, Result
from edge.sim.line import SimBroker, free_port, password_of
from edge.store import Store
from firmware_bridge.sim import SimulatedGrbl, SimulatedMarlin

NODE = "laser-1"
KEYS = ROOT / "examples" / "keys" / "nodes"
OUTPUTS = ("fume_extractor", "laser_enable", "beacon", "belt")
PINS = {"estop": 4, "lid": 5, "belt": 17, "fume_extractor": 22, "laser_enable": 23, "beacon": 24, "part_present": 25}
Usage = namedtuple("Usage", "total used free")


@pytest.fixture(autouse=True)
def mock_pins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[SimBroker]:
    b = SimBroker(tmp_path / "broker", users={u: password_of(u) for u in (NODE, "intake-1")}).start()
    yield b
    b.kill()


@pytest.fixture
def grbl() -> Iterator[SimulatedGrbl]:
    with SimulatedGrbl() as laser:
        yield laser  # type: ignore[misc]


@pytest.fixture
def synced(tmp_path: Path) -> Host:
    """This machine as a Pi whose clock NTP has synchronised (systemd-timesyncd's flag file)."""
    flag = tmp_path / "synchronized"
    flag.touch()
    return Host(timedatectl=None, sync_flag=flag, clock_state=lambda: None, rtc=flag)


def station_file(tmp_path: Path, port: int, grbl_port: str, *, password: str = password_of(NODE),
                 belt_motion: bool = True, socket: Path | None = None, key: str = NODE) -> Path:
    """A laser station with one device of every kind; the belt moves parts unless told otherwise."""
    frames = tmp_path / "frames"
    frames.mkdir(exist_ok=True)
    Image.new("RGB", (64, 48), (200, 40, 40)).save(frames / "0001.png")
    (tmp_path / "scans").touch()
    (tmp_path / "mqtt.password").write_text(password + "\n")
    console = f'socket = "{socket}"' if socket else "enabled = false"
    path = tmp_path / "station.toml"
    path.write_text(f'''
[node]
id = "{NODE}"
line = "demo"
data_dir = "{tmp_path / 'data'}"
line_file = "{EXAMPLES / 'line.toml'}"
key_file = "{KEYS / f'EXAMPLE-ONLY-{key}.pem'}"

[mqtt]
host = "127.0.0.1"
port = {port}
password_file = "{tmp_path / 'mqtt.password'}"
keepalive = 2

[station]
kind = "laser"
grbl = "grbl"
enable = "laser_enable"
extractor = "fume_extractor"

[hardware.estop]
type = "emergency_stop"
pin = "GPIO4"

[hardware.lid]
type = "door_interlock"
pin = "GPIO5"

[hardware.grbl]
type = "serial"
port = "{grbl_port}"
protocol = "grbl"

[hardware.fume_extractor]
type = "digital_output"
pin = "GPIO22"
safe_state = "off"

[hardware.laser_enable]
type = "digital_output"
pin = "GPIO23"
safe_state = "off"

[hardware.beacon]
type = "digital_output"
pin = "GPIO24"
active_high = false
safe_state = "on"

[hardware.belt]
type = "digital_output"
pin = "GPIO17"
safe_state = "off"
motion = {str(belt_motion).lower()}

[hardware.part_present]
type = "digital_input"
pin = "GPIO25"

[hardware.camera]
type = "camera"
source = "file"
path = "{frames}"

[hardware.scanner]
type = "scanner"
source = "file"
path = "{tmp_path / 'scans'}"

[console]
{console}
''')
    return path


def with_ledger(path: Path) -> Path:
    """The station's data dir holds a ledger with an event in it, as after a first start."""
    with Store.open(load_station(path).node.data_dir, NODE) as store:
        store.append("J1", "note", "laser", {"text": "flashed today"})
    return path


class Pins:
    """The board's mock pins as the selftest left them: `board_ready` marks where each began."""

    def __init__(self, open_loop: str | None = None) -> None:
        self.pins: dict[str, Any] = {}
        self.start: dict[str, int] = {}
        self.open_loop = open_loop
        self.boards = 0

    def __call__(self, board: Any) -> None:
        self.boards += 1
        if self.open_loop:
            board.factory.pin(PINS[self.open_loop]).drive_high()  # a pressed button, an open lid
        for name, pin in PINS.items():
            self.pins[name] = board.factory.pin(pin)
            self.start[name] = len(self.pins[name].states)

    def changes(self, name: str) -> list[bool]:
        """Every level the pin took during the checks, in order."""
        return [bool(s.state) for s in self.pins[name].states[self.start[name]:]]


def check(path: Path, host: Host | None = None, **options: Any) -> dict[str, Result]:
    config = load_station(path)
    results = selftest.run(config, load_line(config.node.line_file), host=host, **options)
    return {r.name: r for r in results}


def cli_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, dict[str, Any]]:
    code = main(["selftest", *args, "--json"])
    return code, json.loads(capsys.readouterr().out)


# ---------------------------------------------------------------- the whole station

def test_a_station_ready_to_leave_passes_every_check_and_exits_0(tmp_path, broker, grbl, synced, monkeypatch, capsys):
    path = with_ledger(station_file(tmp_path, broker.port, grbl.port, belt_motion=False))
    monkeypatch.setattr(selftest, "THIS_MACHINE", synced)

    code, report = cli_json(capsys, "--config", str(path))

    assert code == 0 and report["ok"] is True
    assert {c["name"]: c["status"] for c in report["checks"] if c["status"] != OK} == {}
    names = {c["name"] for c in report["checks"]}
    assert names >= {"station and line files", "node key", "edge run", "mqtt", "system clock", "ledger clock",
                     "free space", "ledger"} | set(PINS) | {"grbl", "camera", "scanner"}
    by_name = {c["name"]: c for c in report["checks"]}
    assert by_name["grbl"]["value"].startswith("GRBL 1.1h")
    assert by_name["camera"]["value"] == "64x48"
    assert "authorised as laser-1" in by_name["mqtt"]["detail"]
    assert "New client connected" in broker.read_log() and NODE in broker.read_log()


def test_the_json_report_holds_every_check_and_an_overall_ok(tmp_path, broker, grbl, monkeypatch, capsys):
    path = station_file(tmp_path, broker.port, grbl.port, password="wrong")

    code, report = cli_json(capsys, "--config", str(path), "--no-pulse", "--timeout", "3")

    assert code == 1
    assert set(report) == {"ok", "config", "node", "station", "counts", "checks"}
    assert report["ok"] is False and report["node"] == NODE and report["station"] == "laser"
    assert report["config"] == str(path)
    assert set(report["counts"]) == {OK, WARN, FAIL, SKIP}
    assert sum(report["counts"].values()) == len(report["checks"])
    for c in report["checks"]:
        assert set(c) - {"value"} == {"group", "name", "status", "detail"}, c
        assert c["status"] in (OK, WARN, FAIL, SKIP) and c["detail"]
    assert [c["name"] for c in report["checks"] if c["status"] == FAIL] == ["mqtt"]
    assert {c["group"] for c in report["checks"]} == {"config", "node", "devices", "broker", "clock", "disk", "store"}


def test_a_wrong_mqtt_password_fails_naming_not_authorised_and_exits_1(tmp_path, broker, grbl):
    path = station_file(tmp_path, broker.port, grbl.port, password="not-the-password")

    result = run_edge("selftest", "--config", str(path), "--no-pulse",
                      env={"GPIOZERO_PIN_FACTORY": "mock", "COLUMNS": "400"})

    assert result.returncode == 1, result.stderr
    row = next(line for line in result.stdout.splitlines() if "  mqtt  " in line)
    assert row.startswith("FAIL") and "not authorised" in row and f"127.0.0.1:{broker.port}" in row
    assert result.stdout.rstrip().endswith("FAILED")


def test_a_broker_that_is_down_fails_naming_refused(tmp_path, broker, grbl, synced):
    path = station_file(tmp_path, broker.port, grbl.port)
    broker.kill()

    mqtt = check(path, synced, pulse=False)["mqtt"]

    assert mqtt.status == FAIL
    assert mqtt.detail.startswith(f"127.0.0.1:{broker.port}: refused: nothing listens there")


def test_a_broker_host_that_does_not_resolve_is_named(tmp_path, grbl, synced):
    path = station_file(tmp_path, free_port(), grbl.port)
    path.write_text(path.read_text().replace('host = "127.0.0.1"', 'host = "no-such-hub.invalid"'))

    mqtt = check(path, synced, pulse=False)["mqtt"]

    assert mqtt.status == FAIL and "dns: its host name does not resolve" in mqtt.detail


def test_a_broker_that_does_not_answer_is_named_after_the_timeout(tmp_path, grbl, synced):
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never speaks MQTT
        path = station_file(tmp_path, silent.getsockname()[1], grbl.port)
        mqtt_result = check(path, synced, pulse=False, timeout=0.5)["mqtt"]

    assert mqtt_result.status == FAIL
    assert "no answer: it does not answer" in mqtt_result.detail and "no CONNACK in 0.5 s" in mqtt_result.detail


def session_present(port: int) -> bool:
    """Whether the broker holds a session for the node: asked as the node connects (MQTT 5, clean
    start off); this probe's own session ends with it."""
    answer: queue.Queue[bool] = queue.Queue()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=NODE, protocol=mqtt.MQTTv5)
    client.username_pw_set(NODE, password_of(NODE))
    client.on_connect = lambda _c, _u, flags, _r, _p: answer.put(flags.session_present)
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 0
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    try:
        return answer.get(timeout=10)
    finally:
        client.disconnect()
        client.loop_stop()


def test_the_broker_check_leaves_no_session_behind(tmp_path, broker, grbl, synced):
    path = station_file(tmp_path, broker.port, grbl.port)

    assert check(path, synced, pulse=False)["mqtt"].status == OK

    assert session_present(broker.port) is False  # the node's first connect starts afresh


def test_the_broker_check_leaves_the_node_what_is_queued_for_it(tmp_path, broker, grbl, synced):
    path = station_file(tmp_path, broker.port, grbl.port)
    node = TestClient(broker.port, NODE, password_of(NODE), topics=("fabrique/demo/events/+",), client_id=NODE,
                      clean=False)  # the node's session: it keeps what comes while the node is off
    node.close()
    intake = TestClient(broker.port, "intake-1", password_of("intake-1"), topics=())
    for n in range(3):
        intake.publish("fabrique/demo/events/intake-1", f"batch {n}")
    intake.close()

    assert check(path, synced, pulse=False)["mqtt"].status == OK

    node = TestClient(broker.port, NODE, password_of(NODE), topics=(), client_id=NODE, clean=False)
    node.wait_for(lambda _t, payload: payload == b"batch 2")
    assert node.on("fabrique/demo/events/intake-1") == [b"batch 0", b"batch 1", b"batch 2"]
    node.close()


# ---------------------------------------------------------------- outputs: pulsed only when safe

def test_an_output_that_moves_is_never_pulsed(tmp_path, broker, grbl, synced):
    pins = Pins()
    results = check(station_file(tmp_path, broker.port, grbl.port, belt_motion=True), synced, board_ready=pins)

    assert pins.changes("belt") == []
    assert results["belt"].status == SKIP and "motion = true" in results["belt"].detail
    assert pins.changes("fume_extractor") == [True, False]  # the others were pulsed meanwhile


def test_an_output_is_pulsed_and_back_in_its_safe_state(tmp_path, broker, grbl, synced):
    pins = Pins()
    results = check(station_file(tmp_path, broker.port, grbl.port), synced, board_ready=pins)

    assert pins.changes("fume_extractor") == [True, False]  # safe "off": on, then off again
    assert pins.changes("beacon") == [True, False]  # active low, safe "on": pin high (off), then low (on)
    assert pins.pins["beacon"].state is False
    assert results["fume_extractor"].status == OK and "back to its safe state off" in results["fume_extractor"].detail
    assert results["beacon"].status == OK and "pulsed off" in results["beacon"].detail


@pytest.mark.parametrize("loop", ["estop", "lid"])
def test_an_open_safety_loop_means_no_output_is_pulsed(tmp_path, broker, grbl, synced, loop):
    pins = Pins(open_loop=loop)
    results = check(station_file(tmp_path, broker.port, grbl.port, belt_motion=False), synced, board_ready=pins)

    assert {name: pins.changes(name) for name in OUTPUTS} == {name: [] for name in OUTPUTS}
    assert results[loop].status == WARN and "OPEN" in results[loop].detail
    for name in OUTPUTS:
        assert results[name].status == SKIP and f"safety loop open ({loop})" in results[name].detail
    assert selftest.passed(list(results.values()))  # a warning: the technician may have pressed it


def test_no_pulse_leaves_every_output_alone(tmp_path, broker, grbl, synced):
    pins = Pins()
    results = check(station_file(tmp_path, broker.port, grbl.port, belt_motion=False), synced, pulse=False,
                    board_ready=pins)

    assert {name: pins.changes(name) for name in OUTPUTS} == {name: [] for name in OUTPUTS}
    assert all(results[name].status == SKIP and "--no-pulse" in results[name].detail for name in OUTPUTS)


def test_inputs_and_safety_loops_report_what_they_read(tmp_path, broker, grbl, synced):
    def sensor_sees_a_part(board: Any) -> None:
        board.factory.pin(PINS["part_present"]).drive_low()  # pulled up: low is active

    results = check(station_file(tmp_path, broker.port, grbl.port), synced, pulse=False,
                    board_ready=sensor_sees_a_part)

    assert results["part_present"].status == OK and results["part_present"].value == "on"
    assert results["estop"].status == OK and results["estop"].value == "closed"


# ---------------------------------------------------------------- serial, camera, scanner

def test_an_unplugged_laser_fails_naming_its_port(tmp_path, broker, synced):
    port = "/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0"  # the laser's link, gone with its cable
    path = station_file(tmp_path, broker.port, port)

    result = check(path, synced, pulse=False)["grbl"]

    assert result.status == FAIL and f"{port} not found (is the device plugged in?)" in result.detail


def test_a_port_that_answers_as_another_device_fails(tmp_path, broker, synced):
    with SimulatedMarlin() as printer:  # the printer's cable in the laser's socket
        path = station_file(tmp_path, broker.port, printer.port)
        result = check(path, synced, pulse=False)["grbl"]

    assert result.status == FAIL and printer.port in result.detail and "grbl device" in result.detail


def test_a_camera_with_no_image_and_a_missing_scanner_fail(tmp_path, broker, grbl, synced):
    path = station_file(tmp_path, broker.port, grbl.port)
    (tmp_path / "frames" / "0001.png").unlink()
    (tmp_path / "scans").unlink()

    results = check(path, synced, pulse=False)

    assert results["camera"].status == FAIL and "no images in" in results["camera"].detail
    assert results["scanner"].status == FAIL and "does not exist" in results["scanner"].detail


# ---------------------------------------------------------------- the running node owns its devices

def test_while_the_node_runs_its_devices_and_broker_are_left_alone(tmp_path, broker, grbl, synced):
    path = station_file(tmp_path, broker.port, grbl.port, belt_motion=False)
    pins = Pins()
    with Store.open(load_station(path).node.data_dir, NODE):  # what `edge run` holds while it runs
        results = check(path, synced, board_ready=pins)

    assert pins.boards == 0  # no pin was even claimed
    assert results["edge run"].status == OK and "lock" in results["edge run"].detail
    for name in [*PINS, "grbl", "camera", "scanner"]:
        assert results[name].status == SKIP and "in use by the running node" in results[name].detail
    assert results["mqtt"].status == SKIP and "one per account" in results["mqtt"].detail
    assert "New client connected" not in broker.read_log()


def test_a_running_node_is_read_through_its_console_socket(tmp_path, broker, grbl, synced):
    path = station_file(tmp_path, broker.port, grbl.port, socket=tmp_path / "console.sock")
    config = load_station(path)
    with running(Node(config, load_line(config.node.line_file), tick=0.05)) as node:
        wait_for(lambda: node.sync is not None and node.sync.connected)
        pins = Pins()
        results = check(path, synced, board_ready=pins)
        levels = {name: node.board.factory.pin(pin).state for name, pin in PINS.items()}

    assert pins.boards == 0
    assert "console socket" in results["edge run"].detail
    assert results["mqtt"].status == OK and "the running node is connected" in results["mqtt"].detail
    assert results["grbl"].status == SKIP and "which reads open" in results["grbl"].detail
    assert results["estop"].status == SKIP and "which reads ok" in results["estop"].detail
    assert levels["fume_extractor"] == 0 and levels["belt"] == 0  # the node's outputs, still safe


# ---------------------------------------------------------------- config, clock, disk, ledger

def test_a_node_key_the_line_does_not_list_fails_with_the_line_to_add(tmp_path, broker, grbl, synced):
    path = station_file(tmp_path, broker.port, grbl.port, key="intake-1")  # another node's key file

    result = check(path, synced, pulse=False)["node key"]

    assert result.status == FAIL and "is not the key listed for laser-1" in result.detail
    assert 'laser-1 = "' in result.detail


def test_an_unsynchronised_clock_without_rtc_is_a_warning_not_a_failure(tmp_path):
    host = Host(timedatectl=None, sync_flag=tmp_path / "absent", clock_state=lambda: selftest.TIME_ERROR,
                rtc=tmp_path / "no-rtc")

    result = selftest.clock_check(host)

    assert result.status == WARN
    assert "not synchronised" in result.detail and "no real-time clock" in result.detail


def test_a_ledger_stamp_ahead_of_the_clock_is_a_warning(tmp_path, broker, grbl, synced):
    path = with_ledger(station_file(tmp_path, broker.port, grbl.port))
    behind = Host(timedatectl=None, sync_flag=synced.sync_flag, clock_state=lambda: None, rtc=synced.rtc,
                  wall_ms=lambda: selftest.wall_ms() - 3_600_000)  # booted an hour behind

    result = check(path, behind, pulse=False)["ledger clock"]

    assert result.status == WARN and "ahead of this clock" in result.detail


@pytest.mark.parametrize(("free_mb", "status"), [(10, FAIL), (100, WARN), (500, OK)])
def test_free_disk_space_under_200_mb_warns_and_under_20_mb_fails(tmp_path, free_mb, status):
    host = Host(disk_usage=lambda _path: Usage(1000 * selftest.MB, 0, free_mb * selftest.MB))

    result = selftest.disk_check(tmp_path / "data", host)

    assert result.status == status and result.value == free_mb


def test_a_corrupted_ledger_record_is_reported(tmp_path, broker, grbl, synced):
    path = station_file(tmp_path, broker.port, grbl.port)
    with Store.open(load_station(path).node.data_dir, NODE) as store:
        for job in ("J1", "J2"):
            store.append(job, "created", "laser", {"product": "stand", "route": ["intake", "laser"]})
            store.append(job, "completed", "laser")
        assert store.archive_closed() == ["J1", "J2"]
    segment = tmp_path / "data" / "archive" / "seg-000001.jsonl"
    blob = bytearray(segment.read_bytes())
    blob[40] ^= 0x04  # a flipped bit in the first record, a good record after it
    segment.write_bytes(bytes(blob))

    result = check(path, synced, pulse=False)["ledger"]

    assert result.status == FAIL
    assert "seg-000001.jsonl: 1 bad line" in result.detail and "peers" in result.detail


def test_an_unusable_station_file_exits_2_with_its_errors(tmp_path, capsys):
    path = tmp_path / "station.toml"
    path.write_text('[node]\nid = "laser-1"\nlnie = "demo"\n')

    code = main(["selftest", "--config", str(path), "--json"])
    captured = capsys.readouterr()

    assert code == 2
    assert json.loads(captured.out)["ok"] is False
    assert f"{path}:3: [node] lnie: unknown key" in captured.err
