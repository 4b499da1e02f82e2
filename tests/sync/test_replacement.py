"""Replacing a dead node, end to end, as docs/flashing.md tells a technician: a new card
provisioned from the same station file and the line's secret, a new key listed beside the old
one, and the node gets its history back from its peers.

A "card" is a folder provisioned with `edge provision --root`. Booting it here runs `edge run` on
the installed station file with its absolute paths (/etc/fabrique-edge, /var/lib/fabrique-edge)
taken inside the card, as a chroot would: everything else is what the technician installed."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from trailer import run_edge

from edge.provision import account_password, read_secret
from edge.sim.line import SimBroker, SimNode, converged, station_text, wait_until

PATHS = ("/etc/fabrique-edge", "/var/lib/fabrique-edge")


def provision(card: Path, station: Path, secret: Path) -> str:
    card.mkdir(exist_ok=True)
    done = run_edge("provision", "--station", str(station), "--secret", str(secret), "--root", str(card),
                    "--hostname", "intake")
    assert done.returncode == 0, done.stderr
    return done.stdout


def boot(card: Path, workdir: Path, port: int, line_file: Path) -> SimNode:
    """Start the node installed on `card` (its console on stdin, pins mocked)."""
    installed = (card / "etc/fabrique-edge/station.toml").read_text()
    for path in PATHS:
        installed = installed.replace(f'"{path}', f'"{card}{path}')
    run = card / "etc/fabrique-edge/booted.toml"  # beside line.toml, which it names relatively
    run.write_text(installed)
    node = SimNode(workdir, "intake-1", port, kind="intake", line_file=line_file)
    node.config, node.data_dir = run, card / "var/lib/fabrique-edge"
    return node.start()


def list_key(line_file: Path, entry: str) -> None:
    """What the technician does with the printed line: put it under [nodes.keys] (a list when
    the old key must stay listed)."""
    text = line_file.read_text()
    text = re.sub(r"^intake-1 = .*$", entry, text, count=1, flags=re.M)
    line_file.write_text(text)


def test_a_dead_node_is_replaced_from_its_station_file_and_gets_its_history_back(tmp_path):
    technician = tmp_path / "technician"  # the laptop: the line's files and its secret
    technician.mkdir()
    secret = technician / "line.secret"
    assert run_edge("keys", "secret", str(secret)).returncode == 0
    key = read_secret(secret)
    broker = SimBroker(tmp_path / "hub", users={n: account_password(key, n) for n in ("intake-1", "laser-1")}).start()
    line_file = technician / "line.toml"
    laser = SimNode(tmp_path / "laser", "laser-1", broker.port, kind="laser",
                    password=account_password(key, "laser-1"))
    shutil.copy(laser.line_file, line_file)
    laser.config.write_text(laser.config.read_text().replace(str(laser.line_file), str(line_file)))
    station = technician / "intake.toml"  # the station file the technician keeps
    station.write_text(station_text("intake-1", "intake", Path("/var/lib/fabrique-edge"), broker.port,
                                    Path("/etc/fabrique-edge/mqtt.password"), line_file=Path("line.toml"),
                                    key_file=Path("/etc/fabrique-edge/node.key")).replace('pin_factory = "mock"\n', ""))
    nodes: list[SimNode] = []
    try:
        # the first card: provisioned, its new key listed, booted; it records a job's history
        first = tmp_path / "card-1"
        out = provision(first, station, secret)
        entry = re.search(r"^  (intake-1 = \"[^\"]+\")$", out, re.M)[1]
        list_key(line_file, entry)
        provision(first, station, secret)  # the card gets the line file that lists its key
        laser.start()
        nodes.append(laser)
        intake = boot(first, tmp_path / "run-1", broker.port, line_file)
        nodes.append(intake)
        wait_until(lambda: intake.status()["mqtt"]["connected"], 30, "the first card's node to connect")
        old = intake.notes("CARD1", 4)
        old_origin = intake.origin
        wait_until(converged([intake, laser], {old_origin: 5}), 30, "the history to reach the laser")

        # the card dies with its key: nothing of it is left
        intake.kill()
        shutil.rmtree(first)

        # a new card from the same station file and secret; a new key, listed after the old one
        second = tmp_path / "card-2"
        out = provision(second, station, secret)
        assert "the line file does not list this node's key yet" in out
        new_entry = re.search(r"^  intake-1 = (\"[^\"]+\")$", out, re.M)[1]
        old_key = entry.split(" = ")[1]
        list_key(line_file, f"intake-1 = [{old_key}, {new_entry}]")  # docs: keep the old key listed
        again = provision(second, station, secret)
        assert "changed: /etc/fabrique-edge/line.toml" in again and "the line file lists this node's key" in again
        laser.stop()  # every node restarted on the new line file
        laser.start()
        intake = boot(second, tmp_path / "run-2", broker.port, line_file)
        nodes.append(intake)
        new_origin = intake.origin
        assert new_origin != old_origin
        wait_until(lambda: intake.status()["vector"].get(old_origin) == 5, 30, "its history back from the laser")
        new = intake.notes("CARD1", 2)  # the job is known again: no second launch
        assert len(new) == 2 and not set(new) & set(old)
        wait_until(converged([intake, laser], {old_origin: 5, new_origin: 2}), 30, "both histories everywhere")
        intake.stop()
        laser.stop()
        assert sorted(intake.ledger_ids()) == sorted(laser.ledger_ids()) == sorted(old + new)
    finally:
        for node in nodes:
            node.kill()
        broker.kill()
