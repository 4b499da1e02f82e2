"""`edge provision` into a folder standing for a flashed card: what it installs, with which owners
and modes; idempotence; the units judged by the real systemd-analyze; the hub drop-in loaded by a
real mosquitto under Debian's own mosquitto.conf, with password files from mosquitto_passwd, and
the live view's password accepted by it."""

from __future__ import annotations

import grp
import os
import re
import shutil
import socket
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from mqttclient import TestClient
from paho.mqtt.enums import CallbackAPIVersion
from trailer import run_edge

from edge.provision import account_password, passwd_verifies, read_secret
from edge.sim.line import free_port

ROOT = Path(__file__).resolve().parents[2]
LINE = ROOT / "examples" / "line"
DEBIAN_CONF = Path("/etc/mosquitto/mosquitto.conf")
CMDLINE = "console=serial0,115200 console=tty1 root=PARTUUID=6c586e13-02 rootfstype=ext4 fsck.repair=yes rootwait\n"


@pytest.fixture
def secret(tmp_path) -> Path:
    path = tmp_path / "line.secret"
    done = run_edge("keys", "secret", str(path))
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first = path.read_bytes()
    again = run_edge("keys", "secret", str(path))  # a new secret would change every password of the line
    assert again.returncode == 1 and "already exists; kept" in again.stderr and path.read_bytes() == first
    return path


@pytest.fixture
def card():
    """A card image just flashed: a boot partition, Debian's groups, a bundle's edge in /opt.
    Traversable by others (mosquitto drops to its own user and must reach its files)."""
    root = Path(tempfile.mkdtemp(prefix="fabrique-card-"))
    root.chmod(0o755)
    (root / "boot/firmware").mkdir(parents=True)
    (root / "boot/firmware/config.txt").write_text("dtparam=audio=on\ncamera_auto_detect=1\n\n[all]\n")
    (root / "boot/firmware/cmdline.txt").write_text(CMDLINE)
    (root / "etc").mkdir()
    mosquitto_gid = grp.getgrnam("mosquitto").gr_gid
    (root / "etc/group").write_text(f"root:x:0:\nmosquitto:x:{mosquitto_gid}:\n")
    (root / "etc/hosts").write_text("127.0.0.1\tlocalhost\n127.0.1.1\traspberrypi\n")
    version = root / "opt/fabrique-edge/versions/0.1.0-test/bin"
    version.mkdir(parents=True)
    (version / "edge").write_text("#!/bin/sh\nexit 0\n")
    (version / "edge").chmod(0o755)
    (root / "opt/fabrique-edge/current").symlink_to("versions/0.1.0-test")
    yield root
    shutil.rmtree(root, ignore_errors=True)


def provision(root: Path, secret: Path, *extra: str):
    return run_edge("provision", "--station", str(LINE / "laser.toml"), "--secret", str(secret),
                    "--root", str(root), *extra)


def provision_hub(root: Path, secret: Path, *extra: str):
    """A hub that runs no station: the broker and the live view only."""
    return run_edge("provision", "--hub", "--line", str(LINE / "line.toml"), "--secret", str(secret),
                    "--root", str(root), *extra)


def passwd_hash(passwd: Path, account: str) -> str:
    return next(line.split(":", 1)[1] for line in passwd.read_text().splitlines() if line.startswith(account + ":"))


def with_distribution_units(card: Path) -> None:
    """The distribution's units, as on the card, for systemd-analyze --root."""
    units = card / "usr/lib/systemd/system"
    units.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree("/lib/systemd/system", units, symlinks=True)


def tree(root: Path) -> dict[str, tuple[int, int, int, float]]:
    """Every path under root with its mode, uid, gid and mtime (symlinks not followed)."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            out[str(path.relative_to(root))] = (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns)
    return out


def owner_and_mode(root: Path, path: str) -> tuple[int, int, int]:
    st = (root / path.lstrip("/")).stat()
    return st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)


def ids(root: Path, file: str, name: str) -> int:
    for line in (root / "etc" / file).read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return int(fields[2])
    raise AssertionError(f"no {name} in {file}")


def test_a_node_is_provisioned_with_owners_and_modes_and_a_second_run_changes_nothing(card, secret):
    done = provision(card, secret, "--hub")
    assert done.returncode == 0, done.stderr
    fabrique, mosquitto = ids(card, "passwd", "fabrique"), ids(card, "group", "mosquitto")
    fabrique_group = ids(card, "group", "fabrique")
    for group in ("gpio", "dialout", "video", "input"):  # device access through groups
        members = next(line for line in (card / "etc/group").read_text().splitlines() if line.startswith(group + ":"))
        assert "fabrique" in members.split(":")[3].split(","), members

    def owned(path: str, uid: int, gid: int, mode: int) -> None:
        assert owner_and_mode(card, path) == (uid, gid, mode), path

    owned("/etc/fabrique-edge", 0, fabrique_group, 0o750)
    owned("/var/lib/fabrique-edge", fabrique, fabrique_group, 0o750)
    owned("/etc/fabrique-edge/mqtt.password", 0, fabrique_group, 0o640)  # the service reads it, nobody else
    owned("/etc/fabrique-edge/node.key", 0, fabrique_group, 0o640)
    owned("/etc/mosquitto/fabrique/nodes.passwd", 0, mosquitto, 0o640)
    owned("/etc/fabrique-edge/web.password", 0, 0, 0o600)  # the live view's: systemd reads it as root
    password = (card / "etc/fabrique-edge/mqtt.password").read_text().strip()
    assert password == account_password(read_secret(secret), "laser-1")
    station = (card / "etc/fabrique-edge/station.toml").read_text()
    assert 'line_file = "line.toml"' in station and "# Laser: a GRBL laser" in station  # comments kept
    assert (card / "etc/fabrique-edge/line.toml").read_bytes() == (LINE / "line.toml").read_bytes()
    assert (card / "etc/hostname").read_text() == "laser-1\n"
    assert "127.0.1.1\tlaser-1" in (card / "etc/hosts").read_text()
    assert os.readlink(card / "usr/local/bin/edge") == "/opt/fabrique-edge/current/bin/edge"
    assert os.readlink(card / "etc/systemd/system/multi-user.target.wants/fabrique-edge.service") == \
        "/etc/systemd/system/fabrique-edge.service"
    assert os.readlink(card / "etc/systemd/system/multi-user.target.wants/fabrique-web.service") == \
        "/etc/systemd/system/fabrique-web.service"
    # the operator's console on the header UART: UART on, no kernel console, no login prompt on it
    config_txt = (card / "boot/firmware/config.txt").read_text()
    assert "enable_uart=1" in config_txt.splitlines() and "camera_auto_detect=1" in config_txt
    cmdline = (card / "boot/firmware/cmdline.txt").read_text()
    assert "console=serial0" not in cmdline and "console=tty1" in cmdline and "rootwait" in cmdline
    assert os.readlink(card / "etc/systemd/system/serial-getty@ttyAMA0.service") == "/dev/null"
    # the key is new: its line for [nodes.keys] is printed, once
    assert re.search(r'^  laser-1 = "[A-Za-z0-9+/]{43}="$', done.stdout, re.M), done.stdout

    before = tree(card)
    again = provision(card, secret, "--hub")
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("nothing to change:"), again.stdout
    assert tree(card) == before  # not a byte, mode, owner or mtime touched

    (card / "etc/fabrique-edge/mqtt.password").chmod(0o644)  # someone loosened it
    fixed = provision(card, secret, "--hub")
    assert "changed: /etc/fabrique-edge/mqtt.password" in fixed.stdout and "mode 0644, not 0640" in fixed.stdout
    owned("/etc/fabrique-edge/mqtt.password", 0, fabrique_group, 0o640)


def test_dry_run_changes_nothing_and_bad_files_are_refused_before_anything_is_written(card, secret, tmp_path):
    before = tree(card)
    done = provision(card, secret, "--dry-run")
    assert done.returncode == 0, done.stderr
    assert "would make: /etc/fabrique-edge/station.toml" in done.stdout
    assert tree(card) == before

    bad = tmp_path / "laser.toml"
    shutil.copy(LINE / "line.toml", tmp_path / "line.toml")
    bad.write_text((LINE / "laser.toml").read_text().replace("/dev/serial/by-id/usb-1a86_USB_Serial-if00-port0",
                                                             "COM3"))
    refused = run_edge("provision", "--station", str(bad), "--secret", str(secret), "--root", str(card))
    assert refused.returncode == 1
    assert "COM3" in refused.stderr and "nothing provisioned" in refused.stderr
    assert tree(card) == before

    elsewhere = tmp_path / "laser.toml"
    elsewhere.write_text((LINE / "laser.toml").read_text().replace('data_dir = "/var/lib/fabrique-edge"',
                                                                  'data_dir = "/home/pi/data"'))
    refused = run_edge("provision", "--station", str(elsewhere), "--secret", str(secret), "--root", str(card))
    assert refused.returncode == 1 and "data_dir must be /var/lib/fabrique-edge" in refused.stderr
    assert tree(card) == before


def analyzed(card: Path, unit: str) -> float:
    """`unit` on the provisioned `card` passes `systemd-analyze verify` with nothing said, and
    `security` with its exposure under 3.9; its exposure score."""
    with_distribution_units(card)
    verify = subprocess.run(["systemd-analyze", "verify", f"--root={card}", unit], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stderr
    assert verify.stderr == "", verify.stderr
    security = subprocess.run(["systemd-analyze", "security", "--offline=true", f"--root={card}", "--threshold=39",
                               "--no-pager", f"/etc/systemd/system/{unit}"],  # threshold in tenths
                              capture_output=True, text=True)
    assert security.returncode == 0, security.stdout[-2000:] + security.stderr
    return float(re.search(rf"Overall exposure level for {re.escape(unit)}: ([\d.]+)", security.stdout)[1])


def test_the_installed_unit_passes_systemd_analyze_verify_and_security_below_4(card, secret):
    assert provision(card, secret).returncode == 0
    assert analyzed(card, "fabrique-edge.service") < 4
    unit = (card / "etc/systemd/system/fabrique-edge.service").read_text()
    for setting in ("Type=notify", "WatchdogSec=", "Restart=always", "StartLimitIntervalSec=0",
                    "ExecStartPre=/usr/local/bin/edge check-config", "NoNewPrivileges=yes", "ProtectSystem=strict",
                    "PrivateTmp=yes", "ReadWritePaths=/var/lib/fabrique-edge", "SupplementaryGroups=gpio dialout"):
        assert setting in unit, setting


def test_the_hub_gets_the_live_view_with_the_web_accounts_password_and_a_second_run_changes_nothing(card, secret):
    done = provision_hub(card, secret)
    assert done.returncode == 0, done.stderr
    assert "made: /etc/systemd/system/fabrique-web.service" in done.stdout
    assert "systemctl restart fabrique-web.service" in done.stdout  # what to run once the card boots
    assert (card / "etc/systemd/system/fabrique-web.service").read_bytes() == \
        (ROOT / "systemd/fabrique-web.service").read_bytes()
    assert os.readlink(card / "etc/systemd/system/multi-user.target.wants/fabrique-web.service") == \
        "/etc/systemd/system/fabrique-web.service"
    assert os.readlink(card / "usr/local/bin/edge") == "/opt/fabrique-edge/current/bin/edge"  # its ExecStart
    # the unit's two credentials: the line file, and the password of `web` derived like every account's
    assert (card / "etc/fabrique-edge/line.toml").read_bytes() == (LINE / "line.toml").read_bytes()
    assert owner_and_mode(card, "/etc/fabrique-edge") == (0, 0, 0o750)  # no station here: no fabrique group
    assert owner_and_mode(card, "/etc/fabrique-edge/line.toml") == (0, 0, 0o640)
    password = (card / "etc/fabrique-edge/web.password").read_text()
    assert password == account_password(read_secret(secret), "web") + "\n"
    assert owner_and_mode(card, "/etc/fabrique-edge/web.password") == (0, 0, 0o600)
    keys = run_edge("keys", "password", "web", "--secret", str(secret))
    assert keys.returncode == 0 and keys.stdout == password  # what the docs told a technician to type
    assert passwd_verifies(passwd_hash(card / "etc/mosquitto/fabrique/people.passwd", "web"), password.strip())

    before = tree(card)
    again = provision_hub(card, secret)
    assert again.returncode == 0, again.stderr
    assert again.stdout.startswith("nothing to change:"), again.stdout
    assert "systemctl" not in again.stdout  # nothing changed: nothing to restart
    assert tree(card) == before  # not a byte, mode, owner or mtime touched

    (card / "etc/fabrique-edge/web.password").write_text("typed-by-hand\n")
    fixed = provision_hub(card, secret)
    assert "changed: /etc/fabrique-edge/web.password" in fixed.stdout and "content differs" in fixed.stdout
    assert "typed-by-hand" not in fixed.stdout and password.strip() not in fixed.stdout  # never printed
    assert "systemctl restart fabrique-web.service" in fixed.stdout
    assert "mosquitto" not in fixed.stdout.split("then, on the running system:")[1]  # the broker's files kept
    assert (card / "etc/fabrique-edge/web.password").read_text() == password


def test_the_installed_web_unit_passes_systemd_analyze_verify_and_security(card, secret):
    assert provision_hub(card, secret).returncode == 0
    assert analyzed(card, "fabrique-web.service") < 3


def test_a_hub_and_its_station_serve_one_line_or_nothing_is_written(card, secret, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    shutil.copy(LINE / "laser.toml", other)
    (other / "line.toml").write_text((LINE / "line.toml").read_text() + "# another line's copy\n")
    before = tree(card)
    refused = provision(card, secret, "--hub", "--line", str(other / "line.toml"))
    assert refused.returncode == 1
    assert f"the station's line file is not {other / 'line.toml'}" in refused.stderr
    assert tree(card) == before


def connack(port: int, user: str, password: str) -> str:
    """The broker's answer to a connection with these credentials."""
    answer: list[str] = []
    got = threading.Event()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    client.on_connect = lambda _c, _u, _f, reason, _p: (answer.append(str(reason)), got.set())
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert got.wait(10), "no CONNACK"
    finally:
        client.loop_stop()
        client.disconnect()
    return answer[0]


def debian_mosquitto(card: Path, nodes_port: int, people_port: int) -> Path:
    """Debian's own mosquitto.conf with its paths moved into the card, and the drop-in's ports
    moved to free ones: nothing else changed."""
    conf = DEBIAN_CONF.read_text()
    for old in ("/run/mosquitto/", "/var/lib/mosquitto/", "/var/log/mosquitto/", "/etc/mosquitto/conf.d"):
        conf = conf.replace(old, f"{card}{old}")
        where = card / old.strip("/")
        where.mkdir(parents=True, exist_ok=True)
        shutil.chown(where, "mosquitto")
    (card / "etc/mosquitto/mosquitto.conf").write_text(conf)
    dropin = card / "etc/mosquitto/conf.d/fabrique-hub.conf"
    text = dropin.read_text().replace("listener 1883", f"listener {nodes_port} 127.0.0.1")
    text = text.replace("listener 1884", f"listener {people_port} 127.0.0.1")
    dropin.write_text(text.replace("/etc/mosquitto/fabrique/", f"{card}/etc/mosquitto/fabrique/"))
    return card / "etc/mosquitto/mosquitto.conf"


def test_the_hub_dropin_runs_under_debians_mosquitto_conf_and_keeps_nodes_to_their_topics(card, secret):
    assert DEBIAN_CONF.exists(), "the Debian mosquitto package is not installed"
    done = provision_hub(card, secret)
    assert done.returncode == 0, done.stderr
    assert (card / "etc/hostname").read_text() == "hub\n"
    nodes_port, people_port = free_port(), free_port()
    conf = debian_mosquitto(card, nodes_port, people_port)
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    log = card / "var/log/mosquitto/mosquitto.log"
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            assert broker.poll() is None, broker.stdout.read().decode() + (log.read_text() if log.exists() else "")
            try:
                socket.create_connection(("127.0.0.1", nodes_port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        text = log.read_text()
        assert "Error" not in text and "Warning" not in text, text  # no ACL pattern warnings either
        key = read_secret(secret)
        for node in ("intake-1", "laser-1", "pickup-1"):  # every station file of the line has an account
            assert passwd_verifies(passwd_hash(card / "etc/mosquitto/fabrique/nodes.passwd", node),
                                   account_password(key, node))
        laser = TestClient(nodes_port, "laser-1", account_password(key, "laser-1"), topics=())
        dashboard = TestClient(people_port, "dashboard", account_password(key, "dashboard"), topics=())
        try:
            assert not laser.publish("fabrique/demo/node/laser-1/state", b'{"state": "idle"}').is_failure
            forged = laser.publish("fabrique/demo/node/intake-1/state", b'{"state": "estop"}')
            assert forged.is_failure and "not authorized" in str(forged).lower()
            assert dashboard.publish("fabrique/demo/node/laser-1/cmd", b"{}").is_failure
        finally:
            laser.close()
            dashboard.close()
        assert connack(nodes_port, "laser-1", account_password(key, "laser-1")) == "Success"
        assert connack(nodes_port, "laser-1", "not-the-line-password") == "Not authorized"
        web_password = (card / "etc/fabrique-edge/web.password").read_text().strip()  # as `edge web` reads it
        assert connack(people_port, "web", web_password) == "Success"  # the live view logs in
    finally:
        broker.terminate()
        broker.wait(10)


def test_a_printer_gets_its_gcode_library_and_the_installed_files_check_clean(card, secret):
    done = run_edge("provision", "--station", str(LINE / "printer.toml"), "--secret", str(secret),
                    "--root", str(card))
    assert done.returncode == 0, done.stderr
    library = card / "etc/fabrique-edge/library"
    shipped = (LINE / "../library/printer").resolve()
    assert sorted(p.relative_to(library) for p in library.rglob("*")) == \
        sorted(p.relative_to(shipped) for p in shipped.rglob("*"))
    assert (library / "manifest.toml").read_bytes() == (shipped / "manifest.toml").read_bytes()
    station = card / "etc/fabrique-edge/station.toml"
    assert 'library = "library"' in station.read_text()
    check = run_edge("check-config", "--quiet", str(station), str(card / "etc/fabrique-edge/line.toml"))
    assert check.returncode == 0, check.stderr
