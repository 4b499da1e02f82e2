"""`edge selftest`: is this station ready to be left alone? Every check a technician needs after
flashing a Pi, each one a `Result`: its group, its name, ok / warn / fail / skip, and a detail
saying what is wrong and what to do.

    config   the station and line files load; the node key exists and [nodes.keys] lists it
    node     whether `edge run` runs: its data dir lock is held, or its console socket answers
    devices  every [hardware.*] device: inputs and safety loops read; outputs pulsed and back in
             their safe state, only when that is safe; serial devices identified; a camera
             frame grabbed; scanners present and readable
    broker   reachable and authorised with the station's [mqtt] account
    clock    the system clock synchronised; the ledger's last HLC stamp not ahead of it
    disk     free space where the data dir lives
    store    the ledger read back whole: the hot set's and every archive record's checksum

While the node runs, its devices and its broker connection are its own (the broker binds the
client id to the user name: a second connection on the node's account would throw the node
off). They are left alone, and what the node itself sees is read from its console socket.
An output is pulsed only when nothing can move: never one marked `motion = true`, never with
a safety loop open, never with `pulse=False` (`--no-pulse`), never while the node runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import importlib.util
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.config import HardwareConfig, LineConfig, StationConfig, advice
from edge.console_text import device_line, on_off
from edge.hw import Board, SafetyInterlock
from edge.hw.camera import make_camera
from edge.hw.scanner import make_scanner
from edge.hw.serialport import SerialDevice
from edge.nodekey import NodeKeyError, line_entry, load
from edge.storage import HOT_FILE
from edge.store import LOCK_FILE, Store, wall_ms, writer_running

OK, WARN, FAIL, SKIP = "ok", "warn", "fail", "skip"
STATUSES = (OK, WARN, FAIL, SKIP)
PULSE_S = 0.2  # how long an output leaves its safe state: a relay clicks, a lamp flashes
MB = 1_000_000
DISK_WARN_MB = 200  # less free than this on the data dir's filesystem: a warning
DISK_FAIL_MB = 20  # less than this: a failure (the ledger's next write may be refused)
BROKER_TIMEOUT_S = 5.0
TIMEDATECTL = ("timedatectl", "show", "-p", "NTPSynchronized", "--value")
SYNC_FLAG = Path("/run/systemd/timesync/synchronized")  # systemd-timesyncd touches it once synchronised
RTC = Path("/sys/class/rtc/rtc0")
TIME_ERROR = 5  # adjtimex(2): the kernel clock is not synchronised
SERIAL_FLAVORS = {"framed": "board", "grbl": "grbl", "marlin": "marlin"}  # firmware_bridge's identify
SAFETY_TYPES = ("emergency_stop", "door_interlock")


@dataclass(frozen=True)
class Result:
    """One check: its group, its name, ok/warn/fail/skip, what is wrong and what to do, a value read."""

    group: str
    name: str
    status: str
    detail: str
    value: Any = None

    def to_json(self) -> dict[str, Any]:
        out = {"group": self.group, "name": self.name, "status": self.status, "detail": self.detail}
        if self.value is not None:
            out["value"] = self.value
        return out


def kernel_clock_state() -> int | None:
    """adjtimex(2) read-only: the kernel's clock state (TIME_ERROR: not synchronised); None off Linux."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        timex = ctypes.create_string_buffer(512)  # struct timex, modes = 0: read only
        state = libc.adjtimex(timex)
    except (OSError, AttributeError):
        return None
    return state if state >= 0 else None


@dataclass(frozen=True)
class Host:
    """What the checks read of the machine itself besides the station's devices: tests give their own."""

    timedatectl: tuple[str, ...] | None = TIMEDATECTL
    sync_flag: Path = SYNC_FLAG
    clock_state: Callable[[], int | None] = kernel_clock_state
    rtc: Path = RTC
    wall_ms: Callable[[], int] = wall_ms
    disk_usage: Callable[[Path], Any] = shutil.disk_usage


THIS_MACHINE = Host()


@dataclass
class NodeView:
    """Whether the node runs (None: cannot tell), how that is known, and its own `status`
    when its console socket answered."""

    running: bool | None
    how: str
    status: dict[str, Any] | None = None


def run(config: StationConfig, line: LineConfig, *, pulse: bool = True, timeout: float = BROKER_TIMEOUT_S,
        host: Host | None = None, board_ready: Callable[[Board], None] | None = None) -> list[Result]:
    """Every check of the station, in the order the table shows them. `board_ready` runs once the
    pins exist, before any is read (a test opens a safety loop there, as the simulated world does)."""
    host = host or THIS_MACHINE
    results = [config_check(config, line), node_key_check(config, line)]
    node = node_view(config)
    results.append(node_result(node))
    results += device_checks(config, node, pulse, board_ready)
    results.append(broker_check(config, node, timeout))
    results.append(clock_check(host))
    store, ledger = open_ledger(config)
    try:
        results += [hlc_check(store, host), disk_check(config.node.data_dir, host), ledger]
    finally:
        if store is not None:
            store.close()
    return results


def passed(results: list[Result]) -> bool:
    """No check failed (warnings and skips allowed)."""
    return not any(r.status == FAIL for r in results)


# ---------------------------------------------------------------- config

def config_check(config: StationConfig, line: LineConfig) -> Result:
    summary = (f"{config.source} and {line.source} load: node {config.node.id}, station {config.station.kind}, "
               f"{len(config.hardware)} device(s), line {line.id}")
    warnings = advice(config, line)
    if warnings:
        return Result("config", "station and line files", WARN, f"{summary}; but: " + "; ".join(warnings))
    return Result("config", "station and line files", OK, summary)


def node_key_check(config: StationConfig, line: LineConfig) -> Result:
    """The key file exists, is an Ed25519 key, and the line file lists its public key for this node."""
    path, node = config.node.key_file, config.node.id
    try:
        signer = load(path)
    except FileNotFoundError:
        return Result("config", "node key", FAIL, f"{path} does not exist: `edge keys new --config {config.source}` "
                                                  f"makes it and prints the line to add under [nodes.keys] on every node")
    except NodeKeyError as exc:
        return Result("config", "node key", FAIL, f"{exc}: restore this node's key from the line's backup, or make "
                                                  f"a new one and list it (docs/operations.md)")
    listed = line.node_keys.get(node, ())
    if signer.public_key in listed:
        return Result("config", "node key", OK, f"{path} is listed for {node} in {line.source} [nodes.keys]")
    why = "is not listed" if not listed else "is not the key listed"
    if not config.mqtt.enabled:  # stand-alone: no peer to refuse anything yet
        return Result("config", "node key", WARN, f"{path} {why} for {node} in {line.source} [nodes.keys]: once "
                                                  f"it syncs, peers would refuse its events; add on every node: "
                                                  f"{line_entry(node, signer)}")
    return Result("config", "node key", FAIL, f"{path} {why} for {node} in {line.source} [nodes.keys]: peers refuse "
                                              f"this node's events and the node shows a fault; add on every node: "
                                              f"{line_entry(node, signer)}")


# ---------------------------------------------------------------- the running node

def node_view(config: StationConfig) -> NodeView:
    """Whether `edge run` runs for this station: its store lock is held, or its console socket answers."""
    data_dir = config.node.data_dir
    try:
        locked: bool | None = writer_running(data_dir)
        how = f"its ledger lock {data_dir / LOCK_FILE} is held" if locked else ""
    except OSError as exc:
        locked, how = None, f"cannot read {data_dir / LOCK_FILE}: {exc.strerror or exc}"
    socket = config.console.socket if config.console.enabled else None
    if socket is not None and socket.exists():
        status, why = ask_status(str(socket))
        if status is not None:
            return NodeView(True, "; ".join(filter(None, [how, f"its console socket {socket} answers"])), status)
        if locked is not False:
            how += f"; its console socket {socket}: {why}"
    if locked is False:
        return NodeView(False, f"not running (nothing holds {data_dir / LOCK_FILE})")
    return NodeView(locked, how)


def ask_status(path: str, timeout: float = 5.0) -> tuple[dict[str, Any] | None, str]:
    """The node's `status` over its console socket, or None and why not (also edge bundle apply's)."""
    from edge.commands.console import SocketLink, Unreachable

    async def ask() -> Any:
        link = await SocketLink.open(path)
        try:
            return await link.ask("status")
        finally:
            await link.close()

    try:
        reply = asyncio.run(asyncio.wait_for(ask(), timeout))
    except Unreachable as exc:
        return None, str(exc)
    except TimeoutError:
        return None, f"no answer on {path} within {timeout:g} s"
    if reply.ok and isinstance(reply.result, dict):
        return reply.result, ""
    return None, reply.error or "no status in its answer"


def node_result(node: NodeView) -> Result:
    if node.running is None:
        return Result("node", "edge run", WARN, f"cannot tell whether the node runs ({node.how}): devices and the "
                                                f"broker are left alone; run the selftest as root or as the service user")
    if node.running:
        seen = "shown as it sees them" if node.status is not None else \
            "not checked (set [console] socket to see the node's own view)"
        return Result("node", "edge run", OK, f"running: {node.how}; its devices and broker connection are its own, "
                                              f"{seen}; `systemctl stop fabrique-edge` to test them here")
    return Result("node", "edge run", OK, f"{node.how}: devices and the broker are tested here")


# ---------------------------------------------------------------- devices

def device_checks(config: StationConfig, node: NodeView, pulse: bool,
                  board_ready: Callable[[Board], None] | None) -> list[Result]:
    """One result per [hardware.*] device, in the station file's order."""
    if not config.hardware:
        return [Result("devices", "devices", SKIP, "no [hardware.*] device declared")]
    if node.running is not False:
        return [node_device(dev, node) for dev in config.hardware.values()]
    results = gpio_checks(config, pulse, board_ready)
    for name, dev in config.hardware.items():
        if dev.type == "serial":
            results[name] = serial_check(dev)
        elif dev.type == "camera":
            results[name] = camera_check(dev)
    for name, dev in config.hardware.items():
        if dev.type == "scanner":
            results[name] = scanner_check(dev, results)
    return [results[name] for name in config.hardware]


def kind_of(dev: HardwareConfig) -> str:
    return dev.type.replace("_", " ")


def node_device(dev: HardwareConfig, node: NodeView) -> Result:
    """A device the running node owns: what the node reports of it (its console socket's `status`)."""
    if node.running is None:
        return Result("devices", dev.name, SKIP, f"{kind_of(dev)}: left alone (cannot tell whether the node runs)")
    seen = ((node.status or {}).get("devices") or {}).get(dev.name)
    if not isinstance(seen, dict):
        return Result("devices", dev.name, SKIP, f"{kind_of(dev)}: in use by the running node")
    value, what = device_line(seen)
    fault = seen.get("fault") or seen.get("error")
    if fault:
        return Result("devices", dev.name, FAIL, f"{kind_of(dev)}: in use by the running node, which reports {what}",
                      value)
    if seen.get("tripped"):
        return Result("devices", dev.name, WARN, f"{kind_of(dev)}: in use by the running node, which reads it OPEN "
                                                 f"(a pressed button, an open door or lid, or a cut wire)", value)
    return Result("devices", dev.name, SKIP, f"{kind_of(dev)}: in use by the running node, which reads {value} "
                                             f"({what})", value)


def gpio_checks(config: StationConfig, pulse: bool, board_ready: Callable[[Board], None] | None) -> dict[str, Result]:
    """The pin devices on a Board of their own (the node's seam: same pin factory, same claims,
    same interlock): safety loops and inputs read first, then each output pulsed if safe."""
    gpio = {name: dev for name, dev in config.hardware.items() if dev.pin is not None}
    if not gpio:
        return {}
    board = Board(gpio, lambda _kind, _data: None, config.node.pin_factory)
    try:
        board.start()
    except Exception as exc:  # a pin factory that cannot start here, a pin another process holds
        return {name: Result("devices", name, FAIL, f"{kind_of(dev)} on GPIO{dev.pin}: cannot be set up: {exc}")
                for name, dev in gpio.items()}
    try:
        if board_ready is not None:
            board_ready(board)
        results: dict[str, Result] = {}
        for name, circuit in board.safety.items():
            results[name] = safety_result(gpio[name], circuit.tripped)
        for name, device in board.inputs.items():
            value = on_off(device.value)
            results[name] = Result("devices", name, OK, f"digital input on GPIO{gpio[name].pin}: reads {value}", value)
        for name in board.outputs:
            results[name] = pulse_output(board, gpio[name], pulse)
        return results
    finally:
        board.close()


def safety_result(dev: HardwareConfig, tripped: bool) -> Result:
    if tripped:
        return Result("devices", dev.name, WARN, f"{kind_of(dev)} on GPIO{dev.pin}: OPEN (a pressed button, an open "
                                                 f"door or lid, or a cut wire): outputs stay safe and are not pulsed; "
                                                 f"close it and run the selftest again", "open")
    return Result("devices", dev.name, OK, f"{kind_of(dev)} on GPIO{dev.pin}: closed (healthy)", "closed")


def pulse_output(board: Board, dev: HardwareConfig, pulse: bool) -> Result:
    """Take an output out of its safe state for PULSE_S and back, when nothing can move."""
    output = board.outputs[dev.name]
    safe, other = on_off(dev.safe_state), on_off(not dev.safe_state)
    where = f"digital output on GPIO{dev.pin}"
    not_pulsed = f"{where}: reads {on_off(output.value)} (safe state {safe}); not pulsed"
    if dev.motion:
        return Result("devices", dev.name, SKIP, f"{not_pulsed}: motion = true, it moves something; try it by hand "
                                                 f"at the console: `mode manual`, `drive {dev.name} {other}`")
    if not pulse:
        return Result("devices", dev.name, SKIP, f"{not_pulsed} (--no-pulse)")
    if board.tripped():
        return Result("devices", dev.name, SKIP, f"{not_pulsed}: safety loop open ({', '.join(board.tripped())})")
    try:
        board.drive(dev.name, not dev.safe_state)
        time.sleep(PULSE_S)
    except SafetyInterlock as exc:
        return Result("devices", dev.name, SKIP, f"{not_pulsed}: {exc}")
    except Exception as exc:  # a pin that refuses to be driven
        return Result("devices", dev.name, FAIL, f"{where}: cannot be driven {other}: {exc}")
    finally:
        board.safe_all()
    if output.value != bool(dev.safe_state):
        return Result("devices", dev.name, FAIL, f"{where}: did not go back to its safe state {safe}; check the "
                                                 f"wiring and active_high before starting the node")
    if board.tripped():
        return Result("devices", dev.name, WARN, f"{where}: pulse cut short, a safety loop opened "
                                                 f"({', '.join(board.tripped())})", safe)
    return Result("devices", dev.name, OK, f"{where}: pulsed {other} for {PULSE_S:g} s and back to its safe state "
                                           f"{safe} (did it click or light?)", safe)


def serial_check(dev: HardwareConfig) -> Result:
    """Opened the way the node opens it, then identified (our boards, GRBL, Marlin)."""
    what = f"serial ({dev.protocol}) on {dev.port}"
    port = SerialDevice(dev)
    port.open()
    port.close()
    if port.fault:
        return Result("devices", dev.name, FAIL, f"{what}: {port.fault}; `ls -l /dev/serial/by-id/` lists what is "
                                                 f"plugged in")
    flavor = SERIAL_FLAVORS.get(dev.protocol)
    if flavor is None:
        return Result("devices", dev.name, OK, f"{what}: opens (raw: nothing to identify)")
    from firmware_bridge.cli import identify

    try:
        said = identify(str(dev.port), flavor, dev.baudrate)
    except Exception as exc:  # no answer, another device, unplugged mid-way: the reason is the result
        return Result("devices", dev.name, FAIL, f"{what}: {exc}; check that it is powered, the baudrate "
                                                 f"({dev.baudrate}) and that this port is the {dev.protocol} device")
    return Result("devices", dev.name, OK, f"{what}: {said}", said)


def camera_check(dev: HardwareConfig) -> Result:
    """One frame grabbed through the node's camera seam; its size told."""
    what = f"camera ({dev.source})"
    camera = make_camera(dev)
    try:
        camera.open()
        frame = camera.capture()
    except Exception as exc:  # HardwareError names the camera; a driver's own error the same way
        return Result("devices", dev.name, FAIL, f"{what}: no frame: {exc}")
    finally:
        camera.close()
    height, width = frame.shape[:2]
    size = f"{width}x{height}"
    if dev.source != "file" and (width, height) != tuple(dev.resolution):
        asked = "x".join(map(str, dev.resolution))
        return Result("devices", dev.name, WARN, f"{what}: a frame of {size}, not the {asked} asked for: set "
                                                 f"resolution to a size the camera gives", size)
    return Result("devices", dev.name, OK, f"{what}: a frame of {size}", size)


def scanner_check(dev: HardwareConfig, results: dict[str, Result]) -> Result:
    """A scanner's device path exists and this user may read it; a camera scanner's camera gives frames."""
    what = f"scanner ({dev.source})"
    if dev.source == "camera":
        camera = results.get(str(dev.camera))
        if camera is not None and camera.status == FAIL:
            return Result("devices", dev.name, FAIL, f"{what}: its camera {dev.camera} gives no frame (above)")
        if importlib.util.find_spec("zxingcpp") is None:
            return Result("devices", dev.name, FAIL, f"{what}: zxing-cpp is not installed (pip install zxing-cpp)")
        return Result("devices", dev.name, OK, f"{what}: decodes the frames of camera {dev.camera}")
    where = make_scanner(dev, lambda _name, _text: None).where
    if not os.path.exists(where):
        return Result("devices", dev.name, FAIL, f"{what}: {where} does not exist: is it plugged in? "
                                                 f"(`ls -l /dev/serial/by-id/ /dev/input/by-id/`)")
    if not os.access(where, os.R_OK):
        return Result("devices", dev.name, FAIL, f"{what}: {where} is not readable by this user: the service user "
                                                 f"needs its group (dialout for serial, input for evdev)")
    return Result("devices", dev.name, OK, f"{what}: {where} is there and readable")


# ---------------------------------------------------------------- broker

def broker_check(config: StationConfig, node: NodeView, timeout: float) -> Result:
    """The broker accepts the station's account, or why not (sync's causes: DNS, refused, not authorised)."""
    from edge.sync import MqttLink, broker_cause

    mqtt = config.mqtt
    where = f"{mqtt.host}:{mqtt.port}"
    if not mqtt.enabled:
        return Result("broker", "mqtt", SKIP, "[mqtt] enabled = false: the node runs stand-alone")
    if node.running is None:
        return Result("broker", "mqtt", SKIP, f"{where}: not tried, the node may be running, and a second "
                                              f"connection on its account would throw it off")
    if node.running:
        return node_broker(where, node.status)
    password = None
    if mqtt.password_file is not None:
        try:
            password = mqtt.password_file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            return Result("broker", "mqtt", FAIL, f"[mqtt] password_file {mqtt.password_file}: "
                                                  f"{exc.strerror or exc}: put the node's password there, "
                                                  f"readable by the service user only")
    link = MqttLink(mqtt.host, mqtt.port, mqtt.username, password, mqtt.keepalive, mqtt.tls,
                    str(mqtt.ca_file) if mqtt.ca_file else None, mqtt.protocol)
    error = try_broker(link, config.node.id, timeout)
    if error is not None and link.protocol == 5 and "unsupported protocol version" in error.lower():
        link.protocol = 4  # as the node does: fall back to 3.1.1
        error = try_broker(link, config.node.id, timeout)
    if error is None:
        return Result("broker", "mqtt", OK, f"{where}: connected and authorised as {mqtt.username}")
    return Result("broker", "mqtt", FAIL, f"{where}: {cause_text(broker_cause(error), error)}")


def cause_text(cause: str, detail: str) -> str:
    from edge.sync import CAUSES

    if cause not in CAUSES or cause == "other":
        return detail
    return f"{cause.replace('_', ' ')}: {CAUSES[cause]} ({detail})"


def node_broker(where: str, status: dict[str, Any] | None) -> Result:
    if status is None:
        return Result("broker", "mqtt", SKIP, f"{where}: the running node holds the connection (one per account: a "
                                              f"second would throw it off); set [console] socket to see its view")
    mqtt = status.get("mqtt")
    if not isinstance(mqtt, dict):
        return Result("broker", "mqtt", SKIP, f"{where}: the running node reports no MQTT link")
    if mqtt.get("connected"):
        return Result("broker", "mqtt", OK, f"{where}: the running node is connected")
    problem = mqtt.get("problem") if isinstance(mqtt.get("problem"), dict) else {}
    cause, detail = str(problem.get("cause", "other")), str(problem.get("detail", "not connected yet"))
    return Result("broker", "mqtt", FAIL, f"{where}: the running node cannot reach it: {cause_text(cause, detail)}")


def try_broker(link: Any, client_id: str, timeout: float) -> str | None:
    """Connect once on the node's account and leave: None when the broker accepted it, else the error.

    The node's persistent session is left as it was: nothing is subscribed, published or
    acknowledged (what is queued for the node stays queued for it). A session this connection
    made is dropped again on leaving (MQTT 5; 3.1.1 cannot, and the node finds it empty)."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    from edge.sync import SESSION_EXPIRY_S

    v5 = link.protocol == 5
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5 if v5 else mqtt.MQTTv311,
                         clean_session=None if v5 else False, manual_ack=True, reconnect_on_failure=False)
    client.connect_timeout = timeout
    if link.username:
        client.username_pw_set(link.username, link.password)
    answer: dict[str, Any] = {}

    def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, _p: Any) -> None:
        answer.update(reason=reason, present=bool(getattr(flags, "session_present", False)))

    client.on_connect = on_connect
    try:
        if link.tls:
            client.tls_set(ca_certs=link.ca_file)
        if v5:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = SESSION_EXPIRY_S  # the node's own: its session outlives us
            client.connect(link.host, link.port, link.keepalive, clean_start=False, properties=props)
        else:
            client.connect(link.host, link.port, link.keepalive)
        deadline = time.monotonic() + timeout
        while "reason" not in answer:
            if time.monotonic() > deadline:
                return f"no CONNACK in {timeout:g} s"
            if client.loop(timeout=0.05) != MQTTErrorCode.MQTT_ERR_SUCCESS and "reason" not in answer:
                return "the broker closed the connection before answering"
        if answer["reason"].is_failure:
            return str(answer["reason"])
        leave = None
        if v5 and not answer["present"]:
            leave = Properties(PacketTypes.DISCONNECT)
            leave.SessionExpiryInterval = 0
        client.disconnect(properties=leave)
        client.loop(timeout=0.05)
        return None
    except (OSError, ValueError) as exc:  # socket.gaierror, ConnectionRefusedError, TimeoutError, ssl errors
        return str(exc) or type(exc).__name__
    finally:
        sock = client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()


# ---------------------------------------------------------------- clock, disk, ledger

def synchronised(host: Host) -> tuple[bool | None, str]:
    """Whether the system clock is synchronised, and who says so; None: nothing could tell."""
    if host.timedatectl:
        try:
            out = subprocess.run(host.timedatectl, capture_output=True, text=True, timeout=5)
            said = out.stdout.strip() if out.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            said = ""
        if said in ("yes", "no"):
            return said == "yes", "timedatectl"
    if host.sync_flag.exists():
        return True, str(host.sync_flag)
    state = host.clock_state()
    if state is not None:
        return state != TIME_ERROR, "adjtimex"
    return None, ""


def clock_check(host: Host) -> Result:
    synced, source = synchronised(host)
    no_rtc = "" if host.rtc.exists() else "no real-time clock on this board: "
    if synced:
        after = "; after a power cut with no network it starts from the last saved time" if no_rtc else ""
        return Result("clock", "system clock", OK, f"synchronised ({source}){after}")
    told = f"not synchronised ({source})" if synced is False else "cannot tell whether it is synchronised"
    return Result("clock", "system clock", WARN,
                  f"{told}: {no_rtc}the time is wrong until an NTP server answers (events still order right: "
                  f"the ledger's HLC); give the trailer's network a time server (the hub can serve one) or "
                  f"set it by hand: `sudo date -s ...`")


def hlc_check(store: Store | None, host: Host) -> Result:
    """The ledger's last HLC stamp against the wall clock: far ahead means this clock is behind."""
    if store is None:
        return Result("clock", "ledger clock", SKIP, "no ledger yet")
    last = store.clock.last.wall_ms
    if last == 0:
        return Result("clock", "ledger clock", OK, "no event stamped yet")
    ahead = last - host.wall_ms()
    if ahead > store.clock.max_drift_ms:
        return Result("clock", "ledger clock", WARN,
                      f"the ledger's last stamp is {ahead / 1000:.0f} s ahead of this clock: the clock is behind "
                      f"(booted with no RTC before NTP answered); new events run on from the ledger's time, but "
                      f"set the clock right", ahead)
    return Result("clock", "ledger clock", OK, f"the ledger's last stamp is {max(-ahead, 0) / 1000:.0f} s old, "
                                               f"not ahead of this clock", ahead)


def disk_check(data_dir: Path, host: Host) -> Result:
    where = Path(data_dir).absolute()
    while not where.exists() and where != where.parent:
        where = where.parent
    try:
        usage = host.disk_usage(where)
    except OSError as exc:
        return Result("disk", "free space", FAIL, f"{where}: {exc.strerror or exc}")
    free_mb = usage.free // MB
    said = f"{free_mb} MB free of {usage.total // MB} MB on the filesystem of {data_dir}"
    todo = ("free some: `sudo journalctl --vacuum-size=50M`, old files in /home and /tmp "
            "(docs/operations.md, a full disk)")
    if free_mb < DISK_FAIL_MB:
        return Result("disk", "free space", FAIL, f"{said}: the ledger's next write may be refused; {todo}", free_mb)
    if free_mb < DISK_WARN_MB:
        return Result("disk", "free space", WARN, f"{said}: less than {DISK_WARN_MB} MB; {todo}", free_mb)
    return Result("disk", "free space", OK, said, free_mb)


def open_ledger(config: StationConfig) -> tuple[Store | None, Result]:
    """The store opened read-only (safe while the node runs) and read back whole, with the
    store's own recovery report: what did not check and what it would do about it."""
    data_dir = config.node.data_dir
    if not (data_dir / HOT_FILE).exists() and not (data_dir / "archive").is_dir():
        return None, Result("store", "ledger", SKIP, f"no ledger yet in {data_dir}: the node makes it at its first start")
    try:
        store = Store.open(data_dir, config.node.id, readonly=True)
        archived = sum(1 for _ in store.archive.records())  # every record's CRC, every segment
    except (OSError, ValueError) as exc:
        return None, Result("store", "ledger", FAIL, f"{data_dir}: {exc}")
    counts = {"events": sum(s.events for s in store.open_jobs(include_closed=True)),
              "outbox": store.outbox_size(), "archived": archived}
    notes = list(dict.fromkeys(store.recovery + store.archive.damaged))
    said = f"{data_dir}: {counts['events']} event(s) in the hot set, {archived} archived record(s)"
    if store.archive.damaged or store.hot.suspect:
        return store, Result("store", "ledger", FAIL,
                             f"{said}; damaged: {'; '.join(notes)}: the node keeps every good record and sets "
                             f"the damaged file aside in {data_dir / 'corrupt'} at its next start, and gets what was "
                             f"lost back from its peers; damage again after that: replace the SD card", counts)
    if notes:
        return store, Result("store", "ledger", WARN, f"{said}; the node will tidy at its next start: "
                                                      f"{'; '.join(notes)}", counts)
    return store, Result("store", "ledger", OK, f"{said}: every checksum holds", counts)
