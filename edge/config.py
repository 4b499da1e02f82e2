"""Station and line files (TOML) -> validated, typed config.

Every problem becomes a `ConfigIssue` printed as `FILE:LINE: [section] key: message`, and
all issues of a file are collected before `ConfigError` is raised, so a technician fixes a
file in one pass. Typed getters with bounds (Klipper's configfile idea); unknown keys are
rejected with a "did you mean". Pure: the loaders read the file, nothing else does I/O.
"""

from __future__ import annotations

import base64
import binascii
import importlib
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge.configfile import (
    REQUIRED,
    ConfigError,
    ConfigIssue,
    Document,
    Section,
    did_you_mean,
    open_document,
    type_name,
)

STATION_KINDS = ("intake", "laser", "printer", "transfer", "inspection", "pickup")
HARDWARE_TYPES = (
    "digital_output", "digital_input", "emergency_stop", "door_interlock",
    "serial", "camera", "scanner",
)
OUTPUT_TYPES = ("digital_output",)
SERIAL_PROTOCOLS = ("framed", "grbl", "marlin", "raw")
CAMERA_SOURCES = ("picamera2", "v4l2", "file")
SCANNER_SOURCES = ("serial", "evdev", "camera", "file")
PIN_FACTORIES = ("default", "lgpio", "rpigpio", "pigpio", "native", "mock")
LOG_LEVELS = ("debug", "info", "warning", "error")
OPTION_KINDS = ("choice", "text", "integer")
LIGHT_ROLES = ("green", "amber", "red", "buzzer")
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
NAME_RULE = "1-32 characters: lowercase letters, digits, '-' and '_', starting with a letter or digit"

# Raspberry Pi 40-pin header: physical (BOARD) pin -> BCM GPIO number.
BOARD_TO_BCM = {
    3: 2, 5: 3, 7: 4, 8: 14, 10: 15, 11: 17, 12: 18, 13: 27, 15: 22, 16: 23, 18: 24,
    19: 10, 21: 9, 22: 25, 23: 11, 24: 8, 26: 7, 27: 0, 28: 1, 29: 5, 31: 6, 32: 12,
    33: 13, 35: 19, 36: 16, 37: 26, 38: 20, 40: 21,
}
POWER_PINS = {1: "3V3", 2: "5V", 4: "5V", 6: "GND", 9: "GND", 14: "GND", 17: "3V3", 20: "GND",
              25: "GND", 30: "GND", 34: "GND", 39: "GND"}
# ---------------------------------------------------------------- records

@dataclass(frozen=True)
class NodeConfig:
    id: str
    line: str
    data_dir: Path
    line_file: Path
    log_level: str = "info"
    pin_factory: str = "default"
    key_file: Path | None = None


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool
    host: str
    port: int
    username: str | None
    password_file: Path | None
    tls: bool
    ca_file: Path | None
    keepalive: int
    protocol: int = 5
    inflight: int = 16
    batch: int = 500


@dataclass(frozen=True)
class StationSection:
    kind: str
    title: str
    options: Any = None
    lights: dict[str, str] = field(default_factory=dict)  # green/amber/red/buzzer -> output device
    mode: str = "auto"  # the mode the station starts in


@dataclass(frozen=True)
class HardwareConfig:
    """One device under `[hardware.<name>]`; which fields matter depends on `type`."""

    name: str
    type: str
    pin: int | None = None
    active_high: bool = True
    safe_state: bool | None = None
    pull_up: bool = True
    bounce_ms: int = 20
    port: str | None = None
    baudrate: int = 115200
    protocol: str = "raw"
    source: str | None = None
    path: Path | None = None
    resolution: tuple[int, int] = (1640, 1232)
    camera: str | None = None  # a camera scanner: the [hardware.<camera>] it reads frames from
    interval_ms: int = 200
    motion: bool = False  # a digital_output that moves something (conveyor, gripper): `drive` asks first

    @property
    def is_output(self) -> bool:
        return self.type in OUTPUT_TYPES


@dataclass(frozen=True)
class ConsoleConfig:
    enabled: bool
    serial_port: str | None
    baudrate: int
    socket: Path | None
    stdin: bool
    serial_face: str = "people"  # the serial terminal: "people" (prompt, editing, tables) or "machine"
    pin_hash: str | None = None  # the operator PIN (edge keys pin); None: no login asked
    pin_timeout_s: int = 300  # a login lasts this long without a command
    lockout_after: int = 5  # wrong PINs in a row before logins are locked
    lockout_s: int = 60
    drive_timeout_s: int = 120  # a manual `drive` of an output ends by itself after this long (0: never)


@dataclass(frozen=True)
class StationConfig:
    """A whole station file."""

    source: Path
    node: NodeConfig
    mqtt: MqttConfig
    station: StationSection
    hardware: dict[str, HardwareConfig]
    console: ConsoleConfig


@dataclass(frozen=True)
class OptionSpec:
    """One personalisation option of a product (colour, engraved text, ...)."""

    name: str
    kind: str
    choices: tuple[str, ...] = ()
    max_length: int = 0
    charset: str = ""
    minimum: int | None = None
    maximum: int | None = None
    default: str | int | None = None
    required: bool = False


@dataclass(frozen=True)
class EngravingSpec:
    """Where a product's text is engraved (`[products.<id>.engraving]`): an area in mm, the
    letter heights allowed, the material burnt and the option holding the text."""

    width_mm: float
    height_mm: float
    material: str
    margin_mm: float = 2.0
    min_height_mm: float = 3.0
    max_height_mm: float = 10.0
    max_lines: int = 2
    text_option: str = "text"


@dataclass(frozen=True)
class MaterialSpec:
    """How the laser burns one material (`[materials.<id>]`): GRBL power S, feed mm/min, passes."""

    id: str
    power: int
    feed: int
    passes: int = 1


@dataclass(frozen=True)
class ColourSpec:
    """A body colour the line prints (`[colours.<name>]`): its nominal sRGB and the ΔE*ab the
    inspection camera allows (a station's calibration file measures it on its own camera)."""

    id: str
    srgb: str  # "#rrggbb"
    tolerance: float = 10.0


@dataclass(frozen=True)
class InspectionSpec:
    """Where the inspection camera finds things on a product (`[products.<id>.inspection]`), in
    mm from the top-left corner of the QR label's symbol, x along its top edge, y down its side."""

    label_mm: float
    colour_region: tuple[float, float, float, float] | None = None  # x, y, w, h of plain body
    engraving_at: tuple[float, float] | None = None  # the engraving area's top-left corner
    colour_option: str = "colour"
    redo: dict[str, str] = field(default_factory=dict)  # check -> route step that makes it again
    max_redos: int = 1


@dataclass(frozen=True)
class Product:
    id: str
    title: str
    route: tuple[str, ...]
    options: dict[str, OptionSpec]
    engraving: EngravingSpec | None = None
    inspection: InspectionSpec | None = None


@dataclass(frozen=True)
class StationStory:
    """What the public is told about a station kind: its title, a short text, the trades behind it."""

    title: str = ""
    about: str = ""
    trades: tuple[str, ...] = ()


@dataclass(frozen=True)
class PublicConfig:
    """`[public]`: what the live views may show (edge.public, edge web)."""

    name: str = "initial"  # the engraved name in public: initial, first or none
    url: str = ""  # the base of the QR URL a visitor's phone opens (HTTP://HUB.LOCAL)
    stations: dict[str, StationStory] = field(default_factory=dict)  # by station kind


@dataclass(frozen=True)
class LineConfig:
    """The line file: products, their routes, the keys that sign orders, events and updates."""

    source: Path
    id: str
    title: str
    products: dict[str, Product]
    order_keys: dict[str, bytes]
    order_max_age_s: int
    node_keys: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    materials: dict[str, MaterialSpec] = field(default_factory=dict)
    colours: dict[str, ColourSpec] = field(default_factory=dict)
    update_keys: dict[str, bytes] = field(default_factory=dict)  # who may sign bundles (edge bundle apply)
    public: PublicConfig = field(default_factory=PublicConfig)  # what the live views show


# ---------------------------------------------------------------- pins

def parse_pin(value: Any) -> tuple[int | None, str]:
    """A gpiozero pin spec (17, "GPIO17", "BCM17", "BOARD11", "J8:11") -> (BCM number, error)."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None, f"must be a BCM number or a name like \"GPIO17\" or \"BOARD11\", not {type_name(value)}"
    if isinstance(value, int):
        return (value, "") if 0 <= value <= 27 else (None, f"GPIO{value} does not exist (BCM 0..27)")
    text = value.strip().upper()
    m = re.fullmatch(r"(GPIO|BCM|BOARD|J8:|WPI)?(\d+)", text)
    if not m:
        return None, f"{value!r} is not a pin name (use 17, \"GPIO17\", \"BCM17\" or \"BOARD11\")"
    prefix, number = m.group(1) or "GPIO", int(m.group(2))
    if prefix in ("GPIO", "BCM"):
        return (number, "") if 0 <= number <= 27 else (None, f"{value!r} does not exist (BCM 0..27)")
    if prefix == "WPI":
        return None, f"{value!r}: WiringPi numbers are not supported; use the BCM number"
    if number in POWER_PINS:
        return None, f"{value!r} is a {POWER_PINS[number]} pin, not a GPIO"
    if number not in BOARD_TO_BCM:
        return None, f"{value!r} does not exist (header pins 1..40)"
    return BOARD_TO_BCM[number], ""


UART_PORTS = ("/dev/ttyAMA0", "/dev/serial0", "/dev/ttyS0")  # the 40-pin header's UART
UART_PINS = {14: "TX (header pin 8)", 15: "RX (header pin 10)"}


def _port(s: Section, key: str, default: Any = REQUIRED) -> Any:
    """A serial port: an absolute device path (/dev/ttyUSB0, /dev/serial/by-id/...)."""
    value = s.get_str(key, default)
    if not isinstance(value, str) or not value:
        return value
    if re.fullmatch(r"(?i)COM\d+", value.strip()):
        s.issue(key, f"{value!r} is a Windows port name; on the Pi a serial port is a path like /dev/ttyUSB0, "
                     f"/dev/ttyACM0 or (best) /dev/serial/by-id/...")
    elif not value.startswith("/"):
        s.issue(key, f"{value!r} is not an absolute path: did you mean \"/{value}\"?")
    return value


# ---------------------------------------------------------------- station file

def load_station(path: str | Path) -> StationConfig:
    """Load and validate a station file; raises ConfigError listing every issue."""
    doc = open_document(path)
    node = _read_node(doc)
    mqtt = _read_mqtt(doc, node)
    station = _read_station(doc)
    hardware = _read_hardware(doc)
    _check_station_hardware(doc, station, hardware)
    console = _read_console(doc, hardware)
    doc.finish_top(("node", "mqtt", "station", "hardware", "console"))
    doc.raise_if_issues()
    return StationConfig(Path(path), node, mqtt, station, hardware, console)


def _read_node(doc: Document) -> NodeConfig:
    s = doc.section("node")
    node_id = s.get_str("id", pattern=NAME_RE, rule=NAME_RULE)
    line = s.get_str("line", pattern=NAME_RE, rule=NAME_RULE)
    data_dir = s.get_path("data_dir", "data")
    line_file = s.get_path("line_file", "line.toml")
    level = s.get_str("log_level", "info", choices=LOG_LEVELS)
    factory = s.get_str("pin_factory", "default", choices=PIN_FACTORIES)
    key_file = s.get_path("key_file", "node.key")
    if line_file is not None:
        _check_line_file(s, line_file, line)
    s.finish()
    return NodeConfig(node_id or "", line or "", data_dir or doc.base / "data",
                      line_file or doc.base / "line.toml", level, factory, key_file or doc.base / "node.key")


def _check_line_file(s: Section, path: Path, line_id: str | None) -> None:
    try:
        line = load_line(path)
    except ConfigError as exc:
        first = exc.issues[0]
        more = f" (and {len(exc.issues) - 1} more; run edge check-config on it)" if len(exc.issues) > 1 else ""
        s.issue("line_file", f"{path} does not load: {first}{more}")
        return
    if line_id and line.id and line.id != line_id:
        s.issue("line", f"{line_id!r} is not the id of its line file {path} ({line.id!r}): the node would publish "
                        f"under fabrique/{line_id}/ where no other station listens")


def _read_mqtt(doc: Document, node: NodeConfig) -> MqttConfig:
    s = doc.section("mqtt", required=False)
    enabled = s.get_bool("enabled", True)
    host = s.get_str("host", "localhost")
    if isinstance(host, str) and not host.strip():
        s.issue("host", "must not be empty")
    port = s.get_int("port", 1883, 1, 65535)
    username = s.get_str("username", node.id or None)
    password_file = s.get_path("password_file", None)
    tls = s.get_bool("tls", False)
    ca_file = s.get_path("ca_file", None)
    keepalive = s.get_int("keepalive", 15, 1, 600)
    protocol = s.get_str("protocol", "5", choices=("5", "3.1.1"))
    inflight = s.get_int("inflight", 16, 1, 1000)
    batch = s.get_int("batch", 500, 1, 1000)
    if ca_file is not None and tls is False:
        s.issue("ca_file", "is set but tls = false; set tls = true to use it")
    s.finish()
    return MqttConfig(bool(enabled), host or "localhost", port or 1883, username, password_file,
                      bool(tls), ca_file, keepalive or 15, 4 if protocol == "3.1.1" else 5,
                      inflight or 16, batch or 500)


def _read_station(doc: Document) -> StationSection:
    s = doc.section("station")
    kind = s.get_str("kind", choices=STATION_KINDS)
    title = s.get_str("title", kind or "")
    mode = s.get_str("mode", "auto", choices=("auto", "manual"))
    lights = {role: name for role in LIGHT_ROLES if (name := s.get_str(f"light_{role}" if role != "buzzer"
                                                                      else "buzzer", None))}
    options = None
    if kind:
        try:
            module = importlib.import_module(f"stations.{kind}")
        except ImportError:
            module = None
        reader = getattr(module, "read_config", None)
        if reader is not None:
            options = reader(s)
    s.finish()
    return StationSection(kind or "", title or "", options, lights, mode or "auto")


def hardware_problems(needs: Iterable[tuple[str, str | None, str]], types: Mapping[str, str]) -> list[tuple[str, str]]:
    """(key, problem) for each device a `[station]` key names (`needs`: key, device, the type it
    must be; a None device is an unset optional key) that is not declared with that type."""
    problems = []
    for key, name, kind in needs:
        if name is None:
            continue
        have = types.get(name)
        if have is None:
            problems.append((key, f"no device [hardware.{name}]{did_you_mean(name, types)}"))
        elif have != kind:
            problems.append((key, f"[hardware.{name}] is a {have}, not a {kind}"))
    return problems


def station_needs(station: StationSection) -> list[tuple[str, str | None, str]]:
    """Every device the station's keys name, with the type each must be: the lamps, and what
    the kind's module asks for (`hardware(options)` in stations/<kind>.py)."""
    needs: list[tuple[str, str | None, str]] = [
        ("buzzer" if role == "buzzer" else f"light_{role}", name, "digital_output")
        for role, name in station.lights.items()]
    try:
        module = importlib.import_module(f"stations.{station.kind}")
    except ImportError:
        return needs
    wanted = getattr(module, "hardware", None)
    if wanted is not None and station.options is not None:
        needs += wanted(station.options)
    return needs


def _check_station_hardware(doc: Document, station: StationSection, hardware: dict[str, HardwareConfig]) -> None:
    """A key naming a device that is not declared, or not of the type it needs, is an issue at
    that key's line (not a station that faults when the node starts)."""
    s = doc.section("station")
    for key, problem in hardware_problems(station_needs(station), {n: d.type for n, d in hardware.items()}):
        top, _, sub = key.partition(".")
        s.issue(top, f"{sub}: {problem}" if sub else problem)


def _read_hardware(doc: Document) -> dict[str, HardwareConfig]:
    top = doc.source.data.get("hardware", {})
    if not isinstance(top, dict):
        doc.issue(("hardware",), "", "must be a table of devices, e.g. [hardware.conveyor]", section="hardware")
        return {}
    devices: dict[str, HardwareConfig] = {}
    pins: dict[int, str] = {}
    ports: dict[str, str] = {}
    for name in top:
        s = doc.section("hardware", name)
        if not NAME_RE.match(name):
            s.issue("", f"device name {name!r} is not valid ({NAME_RULE})")
        device = _read_device(s, name)
        if device is None:
            continue
        devices[name] = device
        if device.pin is not None:
            if device.pin in pins:
                s.issue("pin", f"GPIO{device.pin} is already used by [hardware.{pins[device.pin]}]")
            pins.setdefault(device.pin, name)
        if device.port is not None:
            if device.port in ports:
                s.issue("port", f"{device.port} is already used by [hardware.{ports[device.port]}]")
            ports.setdefault(device.port, name)
    return devices


def _read_device(s: Section, name: str) -> HardwareConfig | None:
    kind = s.get_str("type", choices=HARDWARE_TYPES)
    if kind is None:
        s.finish(s.data.keys())
        return None
    fields: dict[str, Any] = {}
    if kind in ("digital_output", "digital_input", "emergency_stop", "door_interlock"):
        raw = s._raw("pin", REQUIRED)
        if raw is not REQUIRED:
            pin, error = parse_pin(raw)
            if error:
                s.issue("pin", error)
            fields["pin"] = pin
    if kind == "digital_output":
        fields["active_high"] = s.get_bool("active_high", True)
        safe = s.get_str("safe_state", choices=("off", "on"))
        fields["safe_state"] = None if safe is None else safe == "on"
        fields["motion"] = bool(s.get_bool("motion", False))
    elif kind in ("digital_input", "emergency_stop", "door_interlock"):
        fields["pull_up"] = s.get_bool("pull_up", True)
        fields["bounce_ms"] = s.get_int("bounce_ms", 20, 0, 1000)
    elif kind == "serial":
        fields["port"] = _port(s, "port")
        fields["baudrate"] = s.get_int("baudrate", 115200, 300, 4_000_000)
        fields["protocol"] = s.get_str("protocol", "raw", choices=SERIAL_PROTOCOLS)
    elif kind == "camera":
        fields["source"] = s.get_str("source", "picamera2", choices=CAMERA_SOURCES)
        fields["path"] = s.get_path("path", None)
        if fields["source"] == "file" and fields["path"] is None:
            s.issue("path", "is required when source = \"file\" (a directory of images)")
        res = s.get("resolution", (list,), "a list [width, height]", None)
        if res is not None:
            if len(res) == 2 and all(isinstance(v, int) and 16 <= v <= 8192 for v in res):
                fields["resolution"] = (res[0], res[1])
            else:
                s.issue("resolution", f"must be [width, height] with each 16..8192, not {res!r}")
    elif kind == "scanner":
        fields["source"] = s.get_str("source", "serial", choices=SCANNER_SOURCES)
        if fields["source"] == "serial":
            fields["port"] = _port(s, "port")
            fields["baudrate"] = s.get_int("baudrate", 9600, 300, 4_000_000)
        elif fields["source"] == "camera":
            camera = s.get_str("camera")
            top = s.doc.source.data.get("hardware")
            cameras = [n for n, d in top.items() if isinstance(d, dict) and d.get("type") == "camera"]
            if camera is not None and camera not in cameras:
                s.issue("camera", f"no camera device [hardware.{camera}] in this file "
                                  f"(cameras: {', '.join(cameras) or 'none'}){did_you_mean(camera, cameras)}")
            fields["camera"] = camera
            fields["interval_ms"] = s.get_int("interval_ms", 200, 20, 60_000)
        else:  # evdev (a /dev/input/by-id/...-event-kbd node) or file
            fields["path"] = s.get_path("path")
    s.finish()
    return HardwareConfig(name=name, type=kind, **{k: v for k, v in fields.items() if v is not None})


def _read_console(doc: Document, hardware: dict[str, HardwareConfig]) -> ConsoleConfig:
    s = doc.section("console", required=False)
    enabled = s.get_bool("enabled", True)
    serial_port = _port(s, "serial_port", None)
    baudrate = s.get_int("baudrate", 115200, 300, 4_000_000)
    socket = s.get_path("socket", None)
    stdin = s.get_bool("stdin", False)
    face = s.get_str("serial_face", "people", choices=("people", "machine"))
    pin_hash = s.get_str("pin_hash", None)
    if pin_hash:
        from edge.control import check_pin_hash

        problem = check_pin_hash(pin_hash)
        if problem:
            s.issue("pin_hash", problem)
    pin_timeout = s.get_int("pin_timeout_s", 300, 10, 86_400)
    lockout_after = s.get_int("lockout_after", 5, 1, 100)
    lockout_s = s.get_int("lockout_s", 60, 1, 86_400)
    drive_timeout = s.get_int("drive_timeout_s", 120, 0, 86_400)
    if serial_port in UART_PORTS:  # the header UART: its two pins are the console's, not GPIO
        for dev in hardware.values():
            if dev.pin in UART_PINS:
                s.doc.issue(("hardware", dev.name, "pin"), "pin", f"GPIO{dev.pin} is the console UART's "
                            f"{UART_PINS[dev.pin]} ([console] serial_port = \"{serial_port}\"): pick another pin",
                            section=f"hardware.{dev.name}")
    if serial_port:
        for dev in hardware.values():
            if dev.port == serial_port:
                s.issue("serial_port", f"{serial_port} is already used by [hardware.{dev.name}]")
    s.finish()
    return ConsoleConfig(bool(enabled), serial_port, baudrate or 115200, socket, bool(stdin), face or "people",
                         pin_hash or None, 300 if pin_timeout is None else pin_timeout,
                         5 if lockout_after is None else lockout_after, 60 if lockout_s is None else lockout_s,
                         120 if drive_timeout is None else drive_timeout)


# ---------------------------------------------------------------- line file

def load_line(path: str | Path) -> LineConfig:
    """Load and validate a line file (products, routes, order keys)."""
    doc = open_document(path)
    s = doc.section("line")
    line_id = s.get_str("id", pattern=NAME_RE, rule=NAME_RULE)
    title = s.get_str("title", line_id or "")
    s.finish()
    keys, max_age = _read_orders(doc)
    node_keys = _read_node_keys(doc)
    update_keys = _read_update_keys(doc, keys)
    public = _read_public(doc)
    materials = _read_materials(doc)
    colours = _read_colours(doc)
    products: dict[str, Product] = {}
    table = doc.source.data.get("products")
    if not isinstance(table, dict) or not table:
        doc.issue(("products",), "", "at least one product is required, e.g. [products.stand]", section="products")
        table = {}
    for pid in table:
        product = _read_product(doc, pid, materials, colours)
        if product is not None:
            products[pid] = product
    doc.finish_top(("line", "orders", "nodes", "updates", "public", "products", "materials", "colours"))
    doc.raise_if_issues()
    return LineConfig(Path(path), line_id or "", title or "", products, keys, max_age or 0, node_keys,
                      materials, colours, update_keys, public)


def _public_key(s: Section, key: str, value: Any) -> bytes | None:
    """A base64 Ed25519 public key, or None after reporting what is wrong with it."""
    if not isinstance(value, str):
        s.issue(key, f"must be a base64 Ed25519 public key string, not {type_name(value)}")
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        s.issue(key, "is not valid base64")
        return None
    if len(raw) != 32:
        s.issue(key, f"an Ed25519 public key is 32 bytes, this one is {len(raw)}")
        return None
    return raw


def _read_node_keys(doc: Document) -> dict[str, tuple[bytes, ...]]:
    """`[nodes.keys]`: node id = "base64 public key" (or a list: a replaced key stays listed,
    so the history it signed still verifies)."""
    s = doc.section("nodes", required=False)
    raw_keys = s.table("keys")
    out: dict[str, tuple[bytes, ...]] = {}
    ks = Section(doc, ("nodes", "keys"), raw_keys)
    for node, value in raw_keys.items():
        if not NAME_RE.match(node):
            ks.issue(node, f"{node!r} is not a node id ({NAME_RULE})")
            continue
        values = value if isinstance(value, list) else [value]
        if not values:
            ks.issue(node, "lists no key")
        keys = [k for k in (_public_key(ks, node, v) for v in values) if k is not None]
        if keys and len(keys) == len(values):
            out[node] = tuple(keys)
    s.finish()
    return out


UPDATE_KEY_RE = re.compile(r"^[A-Za-z0-9_-]{1,32}$")


def _read_update_keys(doc: Document, order_keys: dict[str, bytes]) -> dict[str, bytes]:
    """`[updates.keys]`: name = "base64 public key" of each key whose signed bundles the nodes
    install (edge bundle apply); no table, no update accepted. An order-signing key may not be
    one: it lives on the app backend, which must not be able to put code on the nodes."""
    s = doc.section("updates", required=False)
    raw_keys = s.table("keys")
    ks = Section(doc, ("updates", "keys"), raw_keys)
    out: dict[str, bytes] = {}
    names: dict[bytes, str] = {}
    for name, value in raw_keys.items():
        if not UPDATE_KEY_RE.match(name):
            ks.issue(name, "a key name is 1-32 characters of letters, digits, '-' and '_'")
            continue
        raw = _public_key(ks, name, value)
        if raw is None:
            continue
        if raw in names:
            ks.issue(name, f"is the same key as {names[raw]}")
            continue
        order = next((kid for kid, key in order_keys.items() if key == raw), None)
        if order is not None:
            ks.issue(name, f"is the order-signing key [orders.keys] {order}: make a key for updates only "
                           f"(edge orders keygen) and keep it off the app backend")
            continue
        names[raw] = name
        out[name] = raw
    s.finish()
    return out


def _read_public(doc: Document) -> PublicConfig:
    """`[public]` and `[public.stations.<kind>]`: the name policy, the QR URL base, and what the
    live views tell about each station kind."""
    from edge.public import NAME_POLICIES

    s = doc.section("public", required=False)
    name = s.get_str("name", "initial", choices=NAME_POLICIES)
    url = s.get_str("url", "")
    if isinstance(url, str) and url and not re.fullmatch(r"HTTPS?://[A-Z0-9.:-]+", url):
        s.issue("url", "the base of a QR URL in upper case, e.g. \"HTTP://HUB.LOCAL\" (upper case keeps the QR "
                       "in alphanumeric mode; no path)")
        url = ""
    stations: dict[str, StationStory] = {}
    for kind, body in s.table("stations").items():
        ss = Section(doc, ("public", "stations", kind), body if isinstance(body, dict) else {})
        if not isinstance(body, dict):
            Section(doc, ("public", "stations"), s.data.get("stations", {})).issue(kind, "must be a table")
            continue
        trades = ss.get_str_list("trades", [])
        stations[kind] = StationStory(ss.get_str("title", ""), ss.get_str("about", ""),
                                      tuple(trades) if isinstance(trades, list) else ())
        ss.finish()
    s.finish()
    return PublicConfig(name if isinstance(name, str) else "initial", url or "", stations)


def _read_orders(doc: Document) -> tuple[dict[str, bytes], int]:
    s = doc.section("orders")
    max_age_days = s.get_int("max_age_days", 30, 1, 3650)
    raw_keys = s.table("keys")
    keys: dict[str, bytes] = {}
    for kid, value in raw_keys.items():
        ks = Section(doc, ("orders", "keys"), raw_keys)
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,16}", kid):
            ks.issue(kid, "key id must be 1-16 characters of letters, digits, '-' and '_'")
            continue
        raw = _public_key(ks, kid, value)
        if raw is not None:
            keys[kid] = raw
    if not raw_keys:
        s.issue("keys", "at least one public key is required to verify orders ([orders.keys] id = \"base64\")")
    s.finish()
    return keys, (max_age_days or 30) * 86400


def _read_materials(doc: Document) -> dict[str, MaterialSpec]:
    """`[materials.<id>]`: what the laser burns, each with its power, feed and passes."""
    top = doc.source.data.get("materials", {})
    if not isinstance(top, dict):
        doc.issue(("materials",), "", "must be a table of materials, e.g. [materials.pla]", section="materials")
        return {}
    out: dict[str, MaterialSpec] = {}
    for mid in top:
        s = doc.section("materials", mid)
        if not NAME_RE.match(mid):
            s.issue("", f"material id {mid!r} is not valid ({NAME_RULE})")
        power = s.get_int("power", REQUIRED, 1, 1000)
        feed = s.get_int("feed", REQUIRED, 10, 20000)
        passes = s.get_int("passes", 1, 1, 5)
        s.finish()
        if power is not None and feed is not None and passes is not None:
            out[mid] = MaterialSpec(mid, power, feed, passes)
    return out


HEX_RE = re.compile(r"^#[0-9a-fA-F]{6}$")
INSPECTION_CHECKS = ("colour", "engraving")


def _read_colours(doc: Document) -> dict[str, ColourSpec]:
    """`[colours.<name>]`: the body colours, each with its nominal sRGB and ΔE tolerance."""
    top = doc.source.data.get("colours", {})
    if not isinstance(top, dict):
        doc.issue(("colours",), "", "must be a table of colours, e.g. [colours.red]", section="colours")
        return {}
    out: dict[str, ColourSpec] = {}
    for cid in top:
        s = doc.section("colours", cid)
        srgb = s.get_str("srgb")
        if isinstance(srgb, str) and not HEX_RE.match(srgb):
            s.issue("srgb", f"{srgb!r} is not a colour \"#rrggbb\" (six hex digits)")
            srgb = None
        tolerance = _get_number(s, "tolerance", 10.0, 0.5, 100, "a ΔE (a number)")
        s.finish()
        if srgb is not None and tolerance is not None:
            out[cid] = ColourSpec(cid, srgb.lower(), float(tolerance))
    return out


def _get_number(s: Section, key: str, default: Any, low: float, high: float, what: str, unit: str = "") -> Any:
    """An integer or a decimal number within low..high."""
    value = s.get(key, (int, float), what, default)
    if isinstance(value, int | float) and not isinstance(value, bool) and not low <= value <= high:
        s.issue(key, f"{value} is out of range {low:g}..{high:g}{unit}")
        return None
    return value


def _get_mm_list(s: Section, key: str, n: int, what: str) -> tuple[float, ...] | None:
    """`n` numbers of mm (e.g. [x, y, w, h]); sizes (the 3rd and 4th) must be positive."""
    value = s.get(key, (list,), f"a list {what}", None)
    if value is None:
        return None
    if len(value) != n or not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        s.issue(key, f"must be {what} in mm ({n} numbers), not {value!r}")
        return None
    if any(v <= 0 for v in value[2:]) or any(abs(v) > 1000 for v in value):
        s.issue(key, f"{value!r}: sizes must be above 0 and every value within ±1000 mm")
        return None
    return tuple(float(v) for v in value)


def _read_inspection(doc: Document, pid: str, route: list[str] | None, options: dict[str, OptionSpec],
                     engraving: EngravingSpec | None, colours: dict[str, ColourSpec]) -> InspectionSpec | None:
    s = doc.section("products", pid, "inspection")
    label = _get_mm(s, "label_mm", REQUIRED, 5, 200)
    region = _get_mm_list(s, "colour_region", 4, "[x, y, width, height]")
    at = _get_mm_list(s, "engraving_at", 2, "[x, y]")
    colour_option = s.get_str("colour_option", "colour")
    max_redos = s.get_int("max_redos", 1, 0, 5)
    if at is not None and engraving is None:
        s.issue("engraving_at", "the product has no [engraving] area to check")
    if region is not None and isinstance(colour_option, str):
        option = options.get(colour_option)
        if option is None or option.kind != "choice":
            s.issue("colour_option", f"the product has no choice option {colour_option!r}"
                                     f"{did_you_mean(colour_option, options)}")
        else:
            missing = [c for c in option.choices if c not in colours]
            if missing:
                s.issue("colour_region", f"colours without a [colours.<name>] to compare with: {', '.join(missing)}")
    redo: dict[str, str] = {}
    for check, step in s.table("redo").items():
        if check not in INSPECTION_CHECKS:
            s.issue("redo", f"{check!r} is not a check ({', '.join(INSPECTION_CHECKS)})"
                            f"{did_you_mean(check, INSPECTION_CHECKS)}")
        elif not isinstance(step, str) or step not in (route or ()) or step == "inspection" or (
                "inspection" in (route or ()) and route.index(step) > route.index("inspection")):
            s.issue("redo", f"{check} = {step!r}: must name a step of the route before the inspection "
                            f"({', '.join(route or ())})")
        else:
            redo[check] = step
    s.finish()
    if label is None:
        return None
    return InspectionSpec(float(label), region, at, colour_option or "colour", redo,  # type: ignore[arg-type]
                          max_redos if max_redos is not None else 1)


def _get_mm(s: Section, key: str, default: Any, low: float, high: float) -> Any:
    """A length in mm (an integer or a decimal number) within low..high."""
    return _get_number(s, key, default, low, high, "a number of mm", " mm")


def _read_engraving(doc: Document, pid: str, options: dict[str, OptionSpec],
                    materials: dict[str, MaterialSpec]) -> EngravingSpec | None:
    s = doc.section("products", pid, "engraving")
    width = _get_mm(s, "width_mm", REQUIRED, 1, 1000)
    height = _get_mm(s, "height_mm", REQUIRED, 1, 1000)
    margin = _get_mm(s, "margin_mm", 2.0, 0, 100)
    low = _get_mm(s, "min_height_mm", 3.0, 0.5, 200)
    high = _get_mm(s, "max_height_mm", 10.0, 0.5, 200)
    lines = s.get_int("max_lines", 2, 1, 2)
    material = s.get_str("material")
    text_option = s.get_str("text_option", "text")
    if material is not None and material not in materials:
        known = ", ".join(sorted(materials)) or "none"
        s.issue("material", f"no material [materials.{material}] (materials: {known})"
                            f"{did_you_mean(material, materials)}")
    if text_option is not None:
        option = options.get(text_option)
        if option is None:
            s.issue("text_option", f"the product has no option {text_option!r}{did_you_mean(text_option, options)}")
        elif option.kind != "text":
            s.issue("text_option", f"option {text_option!r} is a {option.kind} option, not a text")
    if low is not None and high is not None and low > high:
        s.issue("min_height_mm", f"{low} mm is more than max_height_mm ({high} mm)")
    if None not in (width, height, margin, low):
        room = min(width, height) - 2 * margin
        if room <= 0:
            s.issue("margin_mm", f"{margin} mm on each side leaves nothing of {width} x {height} mm")
        elif height - 2 * margin < low:
            s.issue("min_height_mm", f"{low} mm letters do not fit in {height} mm less {margin} mm margins")
    s.finish()
    if None in (width, height, margin, low, high, lines, material, text_option) or material not in materials:
        return None
    return EngravingSpec(float(width), float(height), material, float(margin), float(low), float(high),
                         lines, text_option)


def _read_product(doc: Document, pid: str, materials: dict[str, MaterialSpec],
                  colours: dict[str, ColourSpec]) -> Product | None:
    s = doc.section("products", pid)
    if not NAME_RE.match(pid):
        s.issue("", f"product id {pid!r} is not valid ({NAME_RULE})")
    title = s.get_str("title", pid)
    route = s.get_str_list("route")
    if route is not None:
        if not route:
            s.issue("route", "must name at least one station kind")
        for kind in route:
            if kind not in STATION_KINDS:
                s.issue("route", f"{kind!r} is not a station kind ({', '.join(STATION_KINDS)})"
                                 f"{did_you_mean(kind, STATION_KINDS)}")
        if len(set(route)) != len(route):
            s.issue("route", "names a station kind twice")
    options: dict[str, OptionSpec] = {}
    for name in s.table("options"):
        spec = _read_option(doc, pid, name)
        if spec is not None:
            options[name] = spec
    engraving = None
    if isinstance(s.data.get("engraving"), dict):
        engraving = _read_engraving(doc, pid, options, materials)
    s.table("engraving")  # marks the key as known; a value that is not a table is reported here
    inspection = None
    if isinstance(s.data.get("inspection"), dict):
        inspection = _read_inspection(doc, pid, route, options, engraving, colours)
    s.table("inspection")
    s.finish()
    return Product(pid, title or pid, tuple(route or ()), options, engraving, inspection)


def _read_option(doc: Document, pid: str, name: str) -> OptionSpec | None:
    s = doc.section("products", pid, "options", name)
    kind = s.get_str("type", choices=OPTION_KINDS)
    required = s.get_bool("required", False)
    spec: dict[str, Any] = {}
    if kind == "choice":
        choices = s.get_str_list("choices")
        if choices is not None and not choices:
            s.issue("choices", "must list at least one choice")
        spec["choices"] = tuple(choices or ())
        default = s.get_str("default", None)
        if default is not None and choices and default not in choices:
            s.issue("default", f"{default!r} is not one of the choices")
        spec["default"] = default
    elif kind == "text":
        spec["max_length"] = s.get_int("max_length", 20, 1, 200)
        charset = s.get_str("charset", "")  # NFC, like the order's text: é is one character
        spec["charset"] = unicodedata.normalize("NFC", charset) if isinstance(charset, str) else charset
        spec["default"] = s.get_str("default", None)
    elif kind == "integer":
        spec["minimum"] = s.get_int("minimum", None)
        spec["maximum"] = s.get_int("maximum", None)
        spec["default"] = s.get_int("default", None)
    s.finish()
    if kind is None:
        return None
    return OptionSpec(name=name, kind=kind, required=bool(required),
                      **{k: v for k, v in spec.items() if v is not None})


def advice(config: StationConfig, line: LineConfig | None) -> list[str]:
    """Things that load but will not work as the technician expects (printed by check-config
    as warnings, logged by the node at start)."""
    out = []
    node, mqtt = config.node, config.mqtt
    if mqtt.enabled and mqtt.username is not None and mqtt.username != node.id:
        out.append(f"[mqtt] username {mqtt.username!r} is not the node id {node.id!r}: the shipped broker "
                   f"config lets a node write only topics named after its user name, so every event "
                   f"would be refused")
    if line is not None and mqtt.enabled and not line.node_keys.get(node.id):
        out.append(f"[node] id {node.id!r} has no key in {line.source} [nodes.keys]: every peer will refuse "
                   f"this node's events (print the line to add with `edge keys show --config FILE`)")
    if mqtt.enabled and mqtt.password_file is not None and not mqtt.password_file.exists():
        out.append(f"[mqtt] password_file {mqtt.password_file} does not exist: the broker will refuse this node "
                   f"(put its password there, readable by the service user only)")
    calibration = getattr(config.station.options, "calibration", None)
    if config.station.kind == "inspection" and isinstance(calibration, Path) and not calibration.exists():
        out.append(f"[station] calibration {calibration} does not exist yet: the inspection compares with the "
                   f"line file's nominal colours until `edge inspection calibrate --config FILE` measures "
                   f"them on this camera")
    return out


def load_any(path: str | Path) -> StationConfig | LineConfig:
    """Load a station file or a line file, telling them apart by their sections."""
    doc = open_document(path)
    if "line" in doc.source.data or "products" in doc.source.data:
        return load_line(path)
    return load_station(path)


__all__ = [
    "ConfigError", "ConfigIssue", "StationConfig", "LineConfig", "Product", "OptionSpec",
    "EngravingSpec", "MaterialSpec",
    "HardwareConfig", "NodeConfig", "MqttConfig", "ConsoleConfig", "StationSection",
    "load_station", "load_line", "load_any", "parse_pin", "advice", "STATION_KINDS",
]
