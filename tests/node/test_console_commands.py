"""One command registry for console and MQTT: strict arguments, clear refusals, never a crash."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.console import format_reply
from edge.control import MAX_LINE, CommandSet, Param


def registry() -> tuple[CommandSet, list[dict]]:
    calls: list[dict] = []
    cs = CommandSet()
    cs.register("drive", "set an output", lambda a: calls.append(a) or a, Param("device"),
                Param("value", bool), local_only=True)
    cs.register("note", "add a note", lambda a: calls.append(a) or a, Param("job"), Param("text", rest=True))
    cs.register("count", "count", lambda a: a["n"] * 2, Param("n", int), Param("unit", required=False))
    cs.register("boom", "a buggy handler", lambda a: 1 / 0)
    return cs, calls


def test_console_line_and_mqtt_payload_reach_the_same_handler_with_the_same_arguments():
    cs, calls = registry()
    assert cs.run_line("drive conveyor on").ok
    assert cs.dispatch("drive", {"device": "conveyor", "value": True}, remote=False).ok
    assert calls == [{"device": "conveyor", "value": True}] * 2


def test_free_text_keeps_its_spacing_and_quotes():
    cs, calls = registry()
    assert cs.run_line("note J1 it's  'fine'  here ").ok
    assert calls[-1] == {"job": "J1", "text": "it's  'fine'  here "}


def test_hardware_commands_are_refused_remotely_with_a_reason():
    cs, calls = registry()
    reply = cs.dispatch("drive", {"device": "conveyor", "value": True}, remote=True)
    assert not reply.ok and "only allowed at the station" in reply.error
    assert calls == []


def test_bad_arguments_are_named():
    cs, _ = registry()
    assert "not on/off" in cs.run_line("drive conveyor maybe").error
    assert "missing <value>" in cs.run_line("drive conveyor").error
    assert "too many arguments" in cs.run_line("drive a on extra").error
    assert "not a whole number" in cs.run_line("count ten").error
    assert "unknown argument 'speed'" in cs.dispatch("count", {"n": 1, "speed": 3}, remote=True).error
    assert "unknown command 'fly'" in cs.run_line("fly away").error
    assert "cannot read the line" in cs.run_line('count "4').error
    assert cs.run_line("count 21").result == 42


def test_a_buggy_handler_becomes_an_error_reply_not_a_crash():
    cs, _ = registry()
    reply = cs.run_line("boom")
    assert not reply.ok and "ZeroDivisionError" in reply.error
    assert format_reply(reply).startswith("error boom failed")


def test_an_overlong_line_is_refused():
    cs, _ = registry()
    assert "line too long" in cs.run_line("note J " + "x" * MAX_LINE).error


@settings(max_examples=400, deadline=None)
@given(st.text(st.characters(blacklist_characters="\r\n"), max_size=120))
def test_any_console_line_gets_a_one_line_reply(line):
    cs, _ = registry()
    reply = cs.run_line(line)
    assert reply.ok or reply.error
    assert "\n" not in format_reply(reply)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.dictionaries(st.text(max_size=8),
                                             st.one_of(st.none(), st.booleans(), st.integers(), st.text(max_size=8),
                                                       st.lists(st.integers(), max_size=2)), max_size=4))
def test_any_mqtt_command_gets_a_reply(name, args):
    cs, _ = registry()
    reply = cs.dispatch(name, args, remote=True)
    assert reply.ok or reply.error


def test_help_tells_one_command_and_names_an_unknown_one():
    from trailer import EXAMPLES

    from edge.config import load_station
    from edge.node import Node

    commands = Node(load_station(EXAMPLES / "laser.toml")).commands
    one = commands.run_line("help resume")
    assert one.ok and one.result["command"] == "resume" and "hold" in one.result["help"]
    assert commands.run_line("help gcode").result["params"] == {"line": "e.g. G0 X10 Y10"}
    unknown = commands.run_line("help bogus")
    assert not unknown.ok and "unknown command 'bogus'" in unknown.error
    assert len(commands.run_line("help").result) == len(commands.commands)
