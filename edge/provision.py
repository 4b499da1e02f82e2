"""`edge provision`: turn a freshly flashed Pi into a station node (and the hub: broker and live view).

Everything provisioning puts in place is an `Item`: a directory, a file, a symlink, a
mosquitto password file or the service user, each with its owner and mode. A plan is the
list of items for one station file (and, with `--hub`, the line's broker and its live view,
`edge web`); running it compares each item with what is on disk and changes only what
differs, so a second run changes nothing and says so. Every path is on the target system;
`Target(root)` maps it into an image or a test folder (`--root`), owners are looked up in the
target's own /etc/passwd and /etc/group.

MQTT passwords are never typed: each account's password is derived from the line's secret
(`edge keys secret`), HMAC-SHA256(secret, account name). The hub derives every node's from the
station files, each node its own: the broker's password files and the nodes' password files
stay in step by construction, and a replaced node gets the same password again.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from edge.config import LineConfig, StationConfig
from edge.share import shared_file

USER = GROUP = "fabrique"
DEVICE_GROUPS = ("gpio", "dialout", "video", "input")  # pins, serial ports, cameras, scanners
ETC = PurePosixPath("/etc/fabrique-edge")
DATA_DIR = PurePosixPath("/var/lib/fabrique-edge")  # the unit's StateDirectory and its only ReadWritePaths
RUN_DIR = PurePosixPath("/run/fabrique-edge")  # the unit's RuntimeDirectory (console socket)
LINE_FILE = ETC / "line.toml"  # the node's line file, and the live view's (LoadCredential)
UNIT = "fabrique-edge.service"
UNIT_PATH = PurePosixPath("/etc/systemd/system") / UNIT
WANTS = PurePosixPath("/etc/systemd/system/multi-user.target.wants") / UNIT
WEB_UNIT = "fabrique-web.service"  # the live view on the hub, beside mosquitto
WEB_UNIT_PATH = PurePosixPath("/etc/systemd/system") / WEB_UNIT
WEB_WANTS = PurePosixPath("/etc/systemd/system/multi-user.target.wants") / WEB_UNIT
WEB_ACCOUNT = "web"  # its account on the people's listener (people.acl)
WEB_PASSWORD = ETC / "web.password"  # the unit's LoadCredential: read by systemd, as root
EDGE_BIN = PurePosixPath("/usr/local/bin/edge")  # the unit's ExecStart
BUNDLE_EDGE = PurePosixPath("/opt/fabrique-edge/current/bin/edge")  # where a bundle installs it
SYSUSERS = PurePosixPath("/etc/sysusers.d/fabrique-edge.conf")
MOSQUITTO_DROPIN = PurePosixPath("/etc/mosquitto/conf.d/fabrique-hub.conf")
MOSQUITTO_DIR = PurePosixPath("/etc/mosquitto/fabrique")
UART_PORTS = ("/dev/ttyAMA0", "/dev/serial0", "/dev/ttyS0")  # the header UART (GPIO14/15)
GETTYS = ("serial-getty@ttyAMA0.service", "serial-getty@ttyS0.service")
SECRET_BYTES = 32


class ProvisionError(Exception):
    """The plan cannot be made or applied: the message says what and what to do."""


# --- MQTT accounts -----------------------------------------------------------------------

def new_secret() -> bytes:
    """A new line secret: the file's content (base64 text, one line)."""
    return base64.b64encode(secrets.token_bytes(SECRET_BYTES)) + b"\n"


def read_secret(path: Path) -> bytes:
    try:
        text = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ProvisionError(f"cannot read the line secret {path}: {exc.strerror or exc}") from None
    try:
        raw = base64.b64decode(text, validate=True)
    except ValueError:
        raw = b""
    if len(raw) < 16:
        raise ProvisionError(f"{path} is not a line secret (base64 of at least 16 bytes; "
                             f"`edge keys secret FILE` makes one)")
    return raw


def account_password(secret: bytes, account: str) -> str:
    """The MQTT password of one account (a node id, or a people's account such as `dashboard`)."""
    digest = hmac.new(secret, b"fabrique-edge mqtt account\0" + account.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def passwd_verifies(line_hash: str, password: str) -> bool:
    """Whether a mosquitto password file hash ($7$: PBKDF2-SHA512, $6$: SHA512) is of `password`."""
    parts = line_hash.split("$")
    try:
        if len(parts) == 5 and parts[1] == "7":
            salt, digest = base64.b64decode(parts[3]), base64.b64decode(parts[4])
            got = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, int(parts[2]), len(digest))
            return hmac.compare_digest(got, digest)
        if len(parts) == 4 and parts[1] == "6":
            salt, digest = base64.b64decode(parts[2]), base64.b64decode(parts[3])
            return hmac.compare_digest(hashlib.sha512(password.encode() + salt).digest(), digest)
    except ValueError:
        return False
    return False


def nodes_acl(node_ids: Iterable[str]) -> str:
    """The nodes' listener ACL: one block per node, each writing only its own topics.
    Explicit `user` blocks, not `pattern` lines: mosquitto warns at every start about a pattern
    without %u, and the nodes need to read the whole tree."""
    lines = ["# ACL of the nodes' listener (port 1883), made by `edge provision --hub` from the line's",
             "# station files: a node reads the whole tree and writes only its own topics. Every line id",
             "# is allowed (+), so one broker can host a spare line. Do not edit: provision again.", ""]
    for node in sorted(set(node_ids)):
        lines += [f"user {node}",
                  "topic read fabrique/#",
                  f"topic write fabrique/+/node/{node}/status",
                  f"topic write fabrique/+/node/{node}/state",
                  "# MQTT 5 clients may ask for replies on a topic of their own below .../cmd/response/",
                  f"topic write fabrique/+/node/{node}/cmd/response/#",
                  f"topic write fabrique/+/events/{node}",
                  f"topic write fabrique/+/sync/{node}",
                  "# job state is folded from the shared ledger: any node of the line may publish it",
                  "topic write fabrique/+/job/#",
                  "# the live views' public subtree: the station's own face, and any job's",
                  f"topic write fabrique/+/public/node/{node}",
                  "topic write fabrique/+/public/job/#",
                  "topic read homeassistant/status",
                  f"topic write homeassistant/+/{node}/+/config",
                  ""]
    return "\n".join(lines)


def people_accounts(acl_text: str) -> list[str]:
    """The accounts a people's ACL declares (`user NAME` lines)."""
    return [m.group(1) for m in re.finditer(r"^user\s+(\S+)\s*$", acl_text, re.M)]


def make_passwd(path: Path, accounts: dict[str, str]) -> None:
    """A mosquitto password file written by the real mosquitto_passwd."""
    tool = shutil.which("mosquitto_passwd")
    if tool is None:
        raise ProvisionError("mosquitto_passwd not found: install mosquitto (apt-get install mosquitto)")
    path.unlink(missing_ok=True)
    path.touch(mode=0o600)
    for account, password in accounts.items():
        done = subprocess.run([tool, "-b", str(path), account, password], capture_output=True, text=True)
        if done.returncode != 0:
            raise ProvisionError(f"mosquitto_passwd refused account {account!r}: {done.stderr.strip()}")


# --- the target system -------------------------------------------------------------------

class Target:
    """The system being provisioned: `/` or an image folder. Paths are the target's own."""

    def __init__(self, root: Path | str = "/"):
        self.root = Path(root).resolve()

    @property
    def live(self) -> bool:
        return self.root == Path("/")

    def path(self, target_path: PurePosixPath | str) -> Path:
        return self.root / str(target_path).lstrip("/")

    def _ids(self, file: str, name: str) -> int | None:
        try:
            text = self.path(file).read_text()
        except OSError:
            return None
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) > 2 and fields[0] == name:
                return int(fields[2])
        return None

    def uid(self, name: str) -> int | None:
        return 0 if name == "root" else self._ids("/etc/passwd", name)

    def gid(self, name: str) -> int | None:
        return 0 if name == "root" else self._ids("/etc/group", name)

    def members(self, group: str) -> set[str]:
        try:
            text = self.path("/etc/group").read_text()
        except OSError:
            return set()
        for line in text.splitlines():
            fields = line.split(":")
            if len(fields) == 4 and fields[0] == group:
                return {m for m in fields[3].split(",") if m}
        return set()


# --- what provisioning puts in place -----------------------------------------------------

@dataclass
class Item:
    """One thing on the target: kind "dir", "file", "link", "passwd" or "users"."""

    kind: str
    path: PurePosixPath
    why: str
    content: bytes = b""
    link: str = ""
    owner: str = "root"
    group: str = "root"
    mode: int | None = 0o644  # None: leave mode and owner as the target has them (the FAT boot partition)
    accounts: dict[str, str] = field(default_factory=dict)  # passwd: account -> password
    secret: bool = False  # the content is never printed

    def differences(self, target: Target) -> list[str]:
        """What differs on the target (empty: nothing to do)."""
        where = self.path if self.kind == "users" else target.path(self.path)
        if self.kind == "users":
            return self._user_differences(target)
        if self.kind == "key" and not where.exists():
            return ["missing: made now"]
        if self.kind == "link":
            if not where.is_symlink():
                return ["missing" if not where.exists() else "not a symlink"]
            now = os.readlink(where)
            return [] if now == self.link else [f"points at {now}"]
        if not where.exists() or where.is_symlink():
            return ["missing"]
        out = []
        if self.kind == "dir" and not where.is_dir():
            return ["not a directory"]
        if self.kind == "file" and where.read_bytes() != self.content:
            out.append("content differs")
        if self.kind == "passwd":
            out += self._passwd_differences(where)
        if self.mode is None:
            return out
        st = where.stat()
        if st.st_mode & 0o7777 != self.mode:
            out.append(f"mode {st.st_mode & 0o7777:04o}, not {self.mode:04o}")
        uid, gid = target.uid(self.owner), target.gid(self.group)
        if (uid is not None and st.st_uid != uid) or (gid is not None and st.st_gid != gid):
            out.append(f"owner {st.st_uid}:{st.st_gid}, not {self.owner}:{self.group}")
        return out

    def _passwd_differences(self, where: Path) -> list[str]:
        hashes = {}
        for line in where.read_text(errors="replace").splitlines():
            account, _, hashed = line.partition(":")
            if account:
                hashes[account] = hashed
        if set(hashes) != set(self.accounts):
            return [f"accounts {sorted(hashes)}, not {sorted(self.accounts)}"]
        wrong = [a for a, pw in self.accounts.items() if not passwd_verifies(hashes[a], pw)]
        return [f"password of {', '.join(sorted(wrong))} not the line's"] if wrong else []

    def _user_differences(self, target: Target) -> list[str]:
        if target.uid(USER) is None:
            return [f"no user {USER}"]
        missing = [g for g in DEVICE_GROUPS if USER not in target.members(g)]
        return [f"{USER} not in group(s) {', '.join(missing)}"] if missing else []

    def apply(self, target: Target) -> None:
        if self.kind == "users":
            tool = shutil.which("systemd-sysusers")
            if tool is None:
                raise ProvisionError("systemd-sysusers not found: this needs systemd (Raspberry Pi OS has it)")
            done = subprocess.run([tool, f"--root={target.root}"], capture_output=True, text=True)
            if done.returncode != 0:
                raise ProvisionError(f"systemd-sysusers failed: {done.stderr.strip()}")
            return
        where = target.path(self.path)
        where.parent.mkdir(parents=True, exist_ok=True)
        if self.kind == "link":
            if where.is_symlink() or where.exists():
                where.unlink()
            where.symlink_to(self.link)
            return
        if self.kind == "dir":
            where.mkdir(exist_ok=True)
        elif self.kind == "key":
            if not where.exists():
                from edge.nodekey import create

                create(where)
        else:
            tmp = where.with_name(f".{where.name}.provision")
            if self.kind == "passwd":
                make_passwd(tmp, self.accounts)
            else:
                tmp.write_bytes(self.content)
            if self.mode is not None:
                os.chmod(tmp, self.mode)
                self._chown(target, tmp)
            os.replace(tmp, where)
        if self.mode is not None:
            os.chmod(where, self.mode)
            self._chown(target, where)

    def _chown(self, target: Target, where: Path) -> None:
        uid, gid = target.uid(self.owner), target.gid(self.group)
        if uid is None or gid is None:
            raise ProvisionError(f"{self.path}: no {self.owner}:{self.group} on the target (users not created?)")
        if os.geteuid() == 0:
            os.chown(where, uid, gid, follow_symlinks=False)

    def describe(self) -> str:
        if self.kind == "users":
            return f"user {USER} in groups {', '.join(DEVICE_GROUPS)} ({self.why})"
        if self.kind == "link":
            return f"{self.path} -> {self.link} ({self.why})"
        if self.mode is None:
            return f"{self.path} ({self.why})"
        return f"{self.path} ({self.owner}:{self.group} {self.mode:04o}; {self.why})"


def _set_key(text: str, section: str, key: str, value: str) -> str:
    """`text` with `key = "value"` in [section], the rest (comments too) as it was."""
    head = re.search(rf"^\[{re.escape(section)}\][ \t]*(#.*)?$", text, re.M)
    if head is None:
        raise ProvisionError(f"no [{section}] section to set {key} in")
    end = re.search(r"^\[", text[head.end():], re.M)
    stop = head.end() + (end.start() if end else len(text) - head.end())
    body = text[head.end():stop]
    pattern = re.compile(rf"^({re.escape(key)}[ \t]*=[ \t]*)(\"[^\"\n]*\"|'[^'\n]*')", re.M)
    if pattern.search(body):
        body = pattern.sub(lambda m: m.group(1) + f'"{value}"', body, count=1)
    else:
        body = f'\n{key} = "{value}"' + body
    return text[:head.end()] + body + text[stop:]


def _tree(source: Path, dest: PurePosixPath, why: str) -> list[Item]:
    """A folder copied file by file, readable by the service group only."""
    items = [Item("dir", dest, why, group=GROUP, mode=0o750)]
    for path in sorted(source.rglob("*")):
        rel = path.relative_to(source).as_posix()
        if path.is_dir():
            items.append(Item("dir", dest / rel, why, group=GROUP, mode=0o750))
        elif path.is_file():
            items.append(Item("file", dest / rel, why, path.read_bytes(), group=GROUP, mode=0o640))
    return items


def station_items(config: StationConfig, line: LineConfig, secret: bytes | None, target: Target,
                  hostname: str | None = None) -> tuple[list[Item], list[str]]:
    """(items, notes) for one station node."""
    problems = []
    if config.node.data_dir.as_posix() != str(DATA_DIR):
        problems.append(f"[node] data_dir must be {DATA_DIR}: the unit's sandbox lets the node write there only")
    key_file = config.node.key_file
    if key_file is None or not str(key_file).startswith((f"{ETC}/", f"{DATA_DIR}/")):
        problems.append(f"[node] key_file must be under {ETC}/ (or {DATA_DIR}/)")
    if config.console.socket is not None and not str(config.console.socket).startswith(f"{RUN_DIR}/"):
        problems.append(f"[console] socket must be under {RUN_DIR}/ (the unit's RuntimeDirectory)")
    password_file = config.mqtt.password_file if config.mqtt.enabled else None
    if password_file is not None and not str(password_file).startswith(f"{ETC}/"):
        problems.append(f"[mqtt] password_file must be under {ETC}/")
    if problems:
        raise ProvisionError("\n".join(f"{config.source}: {p}" for p in problems))

    notes: list[str] = []
    items = [
        Item("file", SYSUSERS, "the service user and its device groups", _sysusers()),
        Item("users", SYSUSERS, "systemd-sysusers"),
        Item("dir", ETC, "configuration", group=GROUP, mode=0o750),
        Item("dir", DATA_DIR, "ledger and state", owner=USER, group=GROUP, mode=0o750),
    ]
    text = config.source.read_text(encoding="utf-8")
    text = _set_key(text, "node", "line_file", "line.toml")
    library = getattr(config.station.options, "library", None)
    if isinstance(library, Path):
        source = library.resolve()
        if not source.is_dir():
            raise ProvisionError(f"{config.source}: [station] library: no folder {source}")
        items += _tree(source, ETC / "library", "the G-code library")
        text = _set_key(text, "station", "library", "library")
    items += [
        Item("file", ETC / "station.toml", f"from {config.source.name}", text.encode(), group=GROUP, mode=0o640),
        Item("file", LINE_FILE, f"from {line.source.name}", line.source.read_bytes(), group=GROUP,
             mode=0o640),
    ]
    if password_file is not None:
        existing = target.path(password_file)
        if secret is not None:
            password = account_password(secret, config.mqtt.username or config.node.id)
            items.append(Item("file", PurePosixPath(str(password_file)), "MQTT password, read by the service only",
                              (password + "\n").encode(), group=GROUP, mode=0o640, secret=True))
        elif not existing.exists():
            raise ProvisionError(f"{config.source}: [mqtt] password_file {password_file} does not exist on the "
                                 f"target: give --secret FILE (the line's secret) to write it")
    if key_file is not None:
        items.append(Item("key", PurePosixPath(str(key_file)), "the node's event-signing key", group=GROUP,
                          mode=0o640, secret=True))
    items += [
        Item("file", UNIT_PATH, "the node's service", shared_file("systemd", UNIT).read_bytes()),
        Item("link", WANTS, "started at boot", link=str(UNIT_PATH)),
    ]
    edge, edge_notes = _edge_items(target)
    items += edge
    notes += edge_notes
    name = hostname or config.node.id
    items += _hostname_items(target, name)
    if config.console.enabled and config.console.serial_port in UART_PORTS:
        uart, uart_notes = _uart_items(target, config.console.serial_port)
        items += uart
        notes += uart_notes
    return items, notes


def _sysusers() -> bytes:
    lines = ["# fabrique-edge: the station node's service user (edge provision)",
             f'u {USER} - "fabrique-edge station node" {DATA_DIR} /usr/sbin/nologin']
    lines += [f"m {USER} {group}" for group in DEVICE_GROUPS]
    return ("\n".join(lines) + "\n").encode()


def _edge_items(target: Target) -> tuple[list[Item], list[str]]:
    """/usr/local/bin/edge, the units' ExecStart: (items, notes)."""
    edge = _edge_link(target)
    if edge is not None:
        return [Item("link", EDGE_BIN, "the units' ExecStart", link=edge)], []
    if not target.path(EDGE_BIN).exists():
        return [], [f"{EDGE_BIN} does not exist: install fabrique-edge from its bundle (docs/bundles.md)"]
    return [], []


def _edge_link(target: Target) -> str | None:
    """Where /usr/local/bin/edge should point, or None to leave it as it is."""
    if target.path(BUNDLE_EDGE).exists():
        return str(BUNDLE_EDGE)
    here = Path(sys.prefix) / "bin" / "edge"
    if target.live and here.exists() and here.resolve() != Path(EDGE_BIN).resolve():
        current = target.path(EDGE_BIN)
        if current.exists() and not current.is_symlink():
            return None  # an `edge` installed some other way: leave it
        return str(here)
    return None


def _hostname_items(target: Target, name: str) -> list[Item]:
    if not re.fullmatch(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?", name):
        raise ProvisionError(f"{name!r} cannot be a host name (lower-case letters, digits and '-'): give --hostname")
    hosts_path = target.path("/etc/hosts")
    hosts = hosts_path.read_text() if hosts_path.exists() else "127.0.0.1\tlocalhost\n"
    wanted = f"127.0.1.1\t{name}"
    if re.search(r"^127\.0\.1\.1\s.*$", hosts, re.M):
        hosts = re.sub(r"^127\.0\.1\.1\s.*$", wanted, hosts, count=1, flags=re.M)
    else:
        hosts = hosts.rstrip("\n") + f"\n{wanted}\n"
    return [Item("file", PurePosixPath("/etc/hostname"), "host name (next boot)", f"{name}\n".encode()),
            Item("file", PurePosixPath("/etc/hosts"), "host name", hosts.encode())]


def _boot_dir(target: Target) -> PurePosixPath | None:
    for candidate in ("/boot/firmware", "/boot"):
        if target.path(f"{candidate}/config.txt").exists():
            return PurePosixPath(candidate)
    return None


def _uart_items(target: Target, port: str) -> tuple[list[Item], list[str]]:
    """The header UART for the operator's console: on, no kernel console and no login on it."""
    items = [Item("link", PurePosixPath("/etc/systemd/system") / getty, "no login prompt on the console UART",
                  link="/dev/null") for getty in GETTYS]
    boot = _boot_dir(target)
    if boot is None:
        return items, ["no /boot/firmware/config.txt on the target: enable the header UART by hand "
                       "(enable_uart=1 in config.txt, no console=serial0 in cmdline.txt)"]
    config_txt = target.path(boot / "config.txt").read_text()
    wanted = ["enable_uart=1", "dtparam=uart0=on"]
    if port == "/dev/ttyAMA0":
        wanted.append("dtoverlay=disable-bt")  # Pi 3/4: the PL011 UART on GPIO14/15, not Bluetooth's
    missing = [w for w in wanted if not re.search(rf"^{re.escape(w)}\s*$", config_txt, re.M)]
    if missing:
        config_txt = config_txt.rstrip("\n") + "\n\n[all]\n# fabrique-edge: the operator's console on the header UART\n"
        config_txt += "\n".join(missing) + "\n"
    cmdline_path = target.path(boot / "cmdline.txt")
    out = [Item("file", boot / "config.txt", "header UART on (next boot)", config_txt.encode(), mode=None)]
    if cmdline_path.exists():
        cmdline = cmdline_path.read_text()
        words = [w for w in cmdline.split() if not re.fullmatch(r"console=(serial0|ttyAMA0|ttyS0)(,\d+)?", w)]
        out.append(Item("file", boot / "cmdline.txt", "no kernel console on the UART (next boot)",
                        (" ".join(words) + "\n").encode(), mode=None))
    return items + out, []


def hub_items(line: LineConfig, stations: list[StationConfig], secret: bytes, target: Target,
              planned: list[Item]) -> tuple[list[Item], list[str]]:
    """(items, notes) for the line's hub: its broker and its live view. `planned`: the items already
    in the plan (a station on the hub, the host name), which the hub's must agree with."""
    nodes = {s.mqtt.username or s.node.id: s for s in stations if s.mqtt.enabled}
    people_acl = shared_file("systemd", "mosquitto", "people.acl").read_bytes()
    people = people_accounts(people_acl.decode())
    clash = sorted(set(nodes) & set(people))
    if clash:
        raise ProvisionError(f"node account(s) {', '.join(clash)} have the name of a people's account: rename the node")
    if WEB_ACCOUNT not in people:
        raise ProvisionError(f"the shipped people.acl has no `user {WEB_ACCOUNT}`: the live view could not "
                             f"log in (reinstall fabrique-edge)")
    broker = [
        Item("file", MOSQUITTO_DROPIN, "the line's listeners", shared_file("systemd", "mosquitto", "hub.conf").read_bytes()),
        Item("dir", MOSQUITTO_DIR, "ACLs and password files", group="mosquitto", mode=0o750),
        Item("file", MOSQUITTO_DIR / "nodes.acl", "nodes write only their own topics", nodes_acl(nodes).encode(),
             group="mosquitto", mode=0o640),
        Item("file", MOSQUITTO_DIR / "people.acl", "dashboards, operators, Home Assistant, the live view",
             people_acl, group="mosquitto", mode=0o640),
        Item("passwd", MOSQUITTO_DIR / "nodes.passwd", f"{len(nodes)} node account(s)",
             accounts={n: account_password(secret, n) for n in sorted(nodes)}, group="mosquitto", mode=0o640),
        Item("passwd", MOSQUITTO_DIR / "people.passwd", f"{len(people)} people's account(s)",
             accounts={p: account_password(secret, p) for p in people}, group="mosquitto", mode=0o640),
    ]
    web, notes = _web_items(line, secret, target, planned)
    return broker + web, notes


def _web_items(line: LineConfig, secret: bytes, target: Target,
               planned: list[Item]) -> tuple[list[Item], list[str]]:
    """The live view (`edge web`, fabrique-web.service) and the two files it loads as credentials.
    systemd reads them as root for its DynamicUser, so the password is root's alone (0600). The line
    file is the node's when the hub runs a station (the same file is required), else put there."""
    line_item = next((item for item in planned if item.path == LINE_FILE), None)
    items: list[Item] = []
    notes: list[str] = []
    if line_item is None:  # a hub without a station: no node put the line file or `edge` in place
        group = GROUP if target.gid(GROUP) is not None else "root"  # a station provisioned before keeps it
        items += [Item("dir", ETC, "configuration", group=group, mode=0o750),
                  Item("file", LINE_FILE, f"from {line.source.name}, for the live view",
                       line.source.read_bytes(), group=group, mode=0o640)]
        edge, notes = _edge_items(target)
        items += edge
    elif line_item.content != line.source.read_bytes():
        raise ProvisionError(f"the station's line file is not {line.source}: the hub and its station "
                             f"serve one line")
    items += [
        Item("file", WEB_PASSWORD, "the live view's MQTT password",
             (account_password(secret, WEB_ACCOUNT) + "\n").encode(), mode=0o600, secret=True),
        Item("file", WEB_UNIT_PATH, "the live view, port 80", shared_file("systemd", WEB_UNIT).read_bytes()),
        Item("link", WEB_WANTS, "started at boot", link=str(WEB_UNIT_PATH)),
    ]
    return items, notes


# --- running a plan ----------------------------------------------------------------------

@dataclass
class Outcome:
    changed: list[tuple[Item, list[str]]] = field(default_factory=list)
    kept: list[Item] = field(default_factory=list)
    key_line: str | None = None


def run_plan(items: list[Item], target: Target, dry_run: bool) -> Outcome:
    """Compare each item with the target and change what differs (nothing when `dry_run`)."""
    outcome = Outcome()
    for item in items:
        differences = item.differences(target)
        if not differences:
            outcome.kept.append(item)
            continue
        outcome.changed.append((item, differences))
        if not dry_run:
            item.apply(target)
    return outcome


def line_stations(line: LineConfig) -> list[StationConfig]:
    """Every station file beside the line file that belongs to it."""
    from edge.config import ConfigError, load_station

    found = []
    for path in sorted(line.source.parent.glob("*.toml")):
        if path.resolve() == line.source.resolve():
            continue
        try:
            config = load_station(path)
        except ConfigError as exc:
            if "[node]" in path.read_text(errors="replace"):
                raise ProvisionError(f"{path} is a station file of the line with errors:\n{exc}") from None
            continue
        if config.node.line_file.resolve() == line.source.resolve():
            found.append(config)
    return found
