"""Who may do what at a station's console: the operator PIN (hashed, lockout, idle timeout),
questions before what cannot be taken back (`--force` for scripts), "did you mean", and a manual
`drive` that ends by itself; every command's events name the console they came from."""

from __future__ import annotations

import time

import pytest

from edge.control import (
    CommandSet,
    OperatorGuard,
    Param,
    Session,
    check_pin_hash,
    hash_pin,
    verify_pin,
)
from edge.sim.line import SimNode, wait_until

PIN = "2468"
PIN_HASH = hash_pin(PIN, iterations=1000)  # cheap for the tests; the shipped default is 200 000


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_pin_is_stored_salted_and_hashed_and_checked_in_constant_time():
    a, b = hash_pin(PIN), hash_pin(PIN)
    assert a != b and PIN not in a and a.startswith("pbkdf2-sha256$200000$")
    assert verify_pin(PIN, a) and not verify_pin("2469", a) and not verify_pin(PIN, "junk")
    assert check_pin_hash(a) is None
    assert "edge keys pin" in check_pin_hash("1234")


def test_wrong_pins_lock_every_console_out_and_an_idle_login_ends():
    clock = Clock()
    guard = OperatorGuard(PIN_HASH, timeout_s=300, lockout_after=3, lockout_s=60, clock=clock)
    serial, socket_ = Session("serial:/dev/ttyAMA0"), Session("socket")
    assert not guard.allows(serial)
    for left in (2, 1):
        with pytest.raises(Exception, match=f"wrong PIN \\({left} tries left"):
            guard.login(serial, "0000")
    with pytest.raises(Exception, match="locked for 60 s"):
        guard.login(socket_, "0000")  # the third, from another console: it counts all the same
    with pytest.raises(Exception, match="locked"):
        guard.login(serial, PIN)  # even the right PIN, during the lockout
    assert "locked" in guard.why_not()
    clock.now += 61
    assert "logged in" in guard.login(serial, PIN)
    assert guard.allows(serial) and not guard.allows(socket_)
    clock.now += 299
    assert guard.allows(serial)  # used: the login runs on
    clock.now += 301
    assert not guard.allows(serial)  # idle too long
    assert "needs the operator PIN" in guard.why_not()


def registry() -> tuple[CommandSet, list[dict]]:
    calls: list[dict] = []
    cs = CommandSet()
    cs.register("drive", "set an output", lambda a: calls.append(a) or a, Param("device"), Param("value", bool),
                local_only=True, confirm=lambda a: "is everyone clear?" if a["value"] else None,
                examples=("drive conveyor on",))
    cs.register("status", "the state", lambda a: "fine")
    return cs, calls


def test_a_question_first_then_force_and_the_machine_face_says_how():
    cs, calls = registry()
    reply = cs.run_line("drive conveyor on")
    assert not reply.ok and reply.ask == "confirm" and "is everyone clear?" in reply.error
    assert "repeat with --force" in reply.error and calls == []
    assert cs.run_line("drive conveyor off").ok  # to the safe side: nothing to ask
    assert cs.run_line("drive conveyor on --force").ok and calls[-1] == {"device": "conveyor", "value": True}
    mqtt = cs.dispatch("drive", {"device": "conveyor", "value": True, "force": True}, remote=True)
    assert not mqtt.ok and "only allowed at the station" in mqtt.error


def test_unknown_commands_get_a_suggestion_and_help_teaches_one_command():
    cs, _ = registry()
    assert "did you mean 'status'?" in cs.run_line("stauts").error
    assert "did you mean" not in cs.run_line("xyzzy").error
    one = cs.help("DRIVE")
    assert one["command"] == "drive <device> <value>" and one["examples"] == ["drive conveyor on"]
    assert one["asks_to_confirm"] is True and one["needs_pin"] is False


def test_with_a_pin_the_station_commands_wait_for_a_login_per_session():
    cs, calls = registry()
    cs.guard = OperatorGuard(PIN_HASH)
    mine, other = Session("serial:/dev/ttyAMA0"), Session("socket")
    reply = cs.run_line("drive conveyor off", mine)
    assert not reply.ok and reply.ask == "pin" and "login" in reply.error
    cs.guard.login(mine, PIN)
    assert cs.run_line("drive conveyor off", mine).ok
    assert cs.run_line("drive conveyor off", other).ask == "pin"  # a login is one console's
    assert cs.run_line("status", other).ok  # reading needs no PIN


def test_at_a_real_node_pin_questions_timeout_and_the_ledger_says_which_console(tmp_path):
    """`edge run` with its console on stdin: the PIN, a motion output's question, `--force`, the
    manual drive ending by itself, `mode auto` ending it at once, and a cancel's question."""
    from edge.sim.line import SimBroker, example_order, password_of

    broker = SimBroker(tmp_path / "hub", users={"transfer-9": password_of("transfer-9")}).start()
    hardware = ('\n[hardware.conveyor]\ntype = "digital_output"\npin = 17\nsafe_state = "off"\nmotion = true\n'
                '\n[hardware.beam_laser]\ntype = "digital_input"\npin = 5\n'
                '\n[hardware.beam_printer]\ntype = "digital_input"\npin = 6\n'
                '\n[hardware.beam_inspection]\ntype = "digital_input"\npin = 13\n'
                '\n[hardware.beam_pickup]\ntype = "digital_input"\npin = 19\n')
    node = SimNode(tmp_path, "transfer-9", broker.port, kind="transfer", hardware=hardware)
    text = node.config.read_text()
    node.config.write_text(text.replace("[console]\nstdin = true\n",
                                        f'[console]\nstdin = true\npin_hash = "{PIN_HASH}"\ndrive_timeout_s = 1\n'))
    node.start()
    try:
        with pytest.raises(RuntimeError, match="needs the operator PIN"):
            node.command("drive conveyor on")
        with pytest.raises(RuntimeError, match="wrong PIN"):
            node.command("login 1111")
        assert "logged in" in node.command(f"login {PIN}")
        assert node.command("mode manual")["mode"] == "manual"
        with pytest.raises(RuntimeError, match="moves it: is everyone clear of it"):
            node.command("drive conveyor on")
        assert node.status()["devices"]["conveyor"]["value"] is False  # asked, not done
        out = node.command("drive conveyor on --force")
        assert out["conveyor"] is True and "back to off in 1 s" in out["until"]
        wait_until(lambda: node.status()["devices"]["conveyor"]["value"] is False, 10, "the drive to end")
        node.command("drive conveyor on --force")
        node.command("mode auto")
        assert node.status()["devices"]["conveyor"]["value"] is False  # back to safe before auto runs

        node.command(f"launch {example_order('C1')}")
        with pytest.raises(RuntimeError, match=r"cancel job C1 with \d step\(s\) not done"):
            node.command("cancel C1 visitor left")
        assert node.command("cancel C1 visitor left --force")["status"] == "cancelled"
        assert "logged out" in node.command("logout")
        with pytest.raises(RuntimeError, match="needs the operator PIN"):
            node.command("mode manual")
    finally:
        node.close()
        broker.kill()
    events = [e for e in node.ledger() if e.job == "C1"]
    via = {e.type: e.data.get("via") for e in events}
    assert via["created"] == "stdin" and via["cancelled"] == "stdin"
    cancelled = next(e for e in events if e.type == "cancelled")
    assert cancelled.data["reason"] == "visitor left"  # the --force is not part of the reason


def test_login_over_mqtt_is_refused_and_login_is_not_needed_without_a_pin():
    from trailer import EXAMPLES

    from edge.config import load_station
    from edge.control import MQTT_SESSION
    from edge.node import Node

    node = Node(load_station(EXAMPLES / "transfer.toml"))
    here = Session("serial:/dev/ttyAMA0")
    assert "no operator PIN is set" in node.commands.run_line("login 1234", here).result
    node.commands.guard = OperatorGuard(PIN_HASH)
    reply = node.commands.dispatch("login", {"pin": PIN}, session=MQTT_SESSION)
    assert not reply.ok and "at the station's console" in reply.error and MQTT_SESSION.operator_until == 0.0
    assert node.commands.run_line(f"login {PIN}", here).ok and here.operator_until > time.monotonic()
