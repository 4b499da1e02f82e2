"""A technician's key work: make a node key, list it in the line file, and be warned by
check-config about what loads but will not sync."""

from __future__ import annotations

import stat
from pathlib import Path

from trailer import EXAMPLES, run_edge

from edge.config import load_line, load_station
from edge.node import Node
from edge.sim.line import free_port


def station(tmp_path: Path, node: str = "spare-9", username: str | None = None, line_file: Path | None = None,
            mqtt: bool = True) -> Path:
    path = tmp_path / f"{node}.toml"
    mqtt_section = (f'host = "127.0.0.1"\nport = {free_port()}\n' + (f'username = "{username}"\n' if username else "")
                    if mqtt else "enabled = false\n")
    path.write_text(f"""[node]
id = "{node}"
line = "demo"
data_dir = "{tmp_path / 'data'}"
line_file = "{line_file or EXAMPLES / 'line.toml'}"
pin_factory = "mock"
[mqtt]
{mqtt_section}[station]
kind = "laser"
""")
    return path


def test_keys_new_makes_a_private_key_once_and_prints_the_line_for_the_line_file(tmp_path):
    config = station(tmp_path)
    made = run_edge("keys", "new", "--config", str(config))
    assert made.returncode == 0, made.stderr
    line = [x for x in made.stdout.splitlines() if x.startswith("spare-9 = ")][0]
    key = tmp_path / "node.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and b"PRIVATE KEY" in key.read_bytes()
    again = run_edge("keys", "new", "--config", str(config))
    assert "kept the existing" in again.stdout and line in again.stdout  # never overwritten
    shown = run_edge("keys", "show", "--config", str(config))
    assert shown.returncode == 1 and "NOT listed" in shown.stderr and line in shown.stdout
    listed = tmp_path / "line.toml"
    listed.write_text((EXAMPLES / "line.toml").read_text() + line + "\n")
    config.write_text(config.read_text().replace(str(EXAMPLES / "line.toml"), str(listed)))
    assert run_edge("keys", "show", "--config", str(config)).returncode == 0


def test_check_config_warns_about_a_user_name_that_is_not_the_node_id_and_an_unlisted_key(tmp_path):
    done = run_edge("check-config", str(station(tmp_path, username="intake-1")))
    assert done.returncode == 0, done.stderr  # warnings, not errors: the file is valid
    assert "warning: [mqtt] username 'intake-1' is not the node id 'spare-9'" in done.stderr
    assert "has no key in" in done.stderr and "[nodes.keys]" in done.stderr
    assert "key_file" in done.stderr  # not made yet: told how


def test_the_example_stations_check_without_warnings_but_the_files_a_technician_makes(tmp_path):
    done = run_edge("check-config", *[str(p) for p in sorted(EXAMPLES.glob("*.toml"))])
    assert done.returncode == 0, done.stderr
    warnings = [w for w in done.stderr.splitlines() if "warning" in w]
    made = ("[node] key_file /etc/fabrique-edge/node.key", "[station] calibration /var/lib/fabrique-edge/",
            "[mqtt] password_file /etc/fabrique-edge/mqtt.password")  # the files a technician makes
    assert warnings and all(any(m in w for m in made) for w in warnings), warnings
    calibrate = [w for w in warnings if "calibration" in w]
    assert len(calibrate) == 1 and "inspection.toml" in calibrate[0] and "edge inspection calibrate" in calibrate[0]


def test_a_line_file_with_a_bad_node_key_names_the_node(tmp_path):
    bad = tmp_path / "line.toml"
    bad.write_text((EXAMPLES / "line.toml").read_text() + 'spare-9 = "bm90IGEga2V5"\nSpare = "x"\n')
    done = run_edge("check-config", str(bad))
    assert done.returncode == 1
    assert "[nodes.keys] spare-9: an Ed25519 public key is 32 bytes, this one is 9" in done.stderr
    assert "'Spare' is not a node id" in done.stderr


def test_a_node_whose_key_the_line_does_not_list_is_in_fault_and_says_why(tmp_path, monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    config = load_station(station(tmp_path))
    node = Node(config, load_line(config.node.line_file))
    node.start()
    try:
        assert (tmp_path / "node.key").exists()  # made at first boot
        assert node.state == "fault" and "not listed for spare-9" in node.reason
        assert node.get_status()["ledger"]["signed"] is True
    finally:
        node.shutdown()


def test_a_stand_alone_node_needs_no_listed_key(tmp_path, monkeypatch):
    monkeypatch.setenv("GPIOZERO_PIN_FACTORY", "mock")
    config = load_station(station(tmp_path, mqtt=False))
    node = Node(config, load_line(config.node.line_file))
    node.start()
    try:
        assert node.state == "idle"
    finally:
        node.shutdown()
