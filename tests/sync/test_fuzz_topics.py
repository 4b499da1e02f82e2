"""No input from the network can stop a node: every subscribed topic, fuzzed.

One real node (store, signatures, command registry, sync) takes hypothesis-made messages on
every topic it subscribes to, through the same handler its loop runs, and then the same
group-commit flush. Nothing may escape a handler (the loop counts escapes as errors), and
nothing unsigned may enter the ledger. A second test sends the classic killers through a
real mosquitto to a running `edge run` and checks the line lives on.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mqttclient import TestClient

from edge.config import load_line, load_station
from edge.homeassistant import HA_STATUS_TOPIC
from edge.node import Event, Node
from edge.sim.line import free_port, password_of, sim_line_file, wait_until, write_sim_key

LINE = "fabrique/demo"
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
ids = st.one_of(st.text(max_size=30), st.sampled_from(["rogue-1:²", "intake-1:0", "intake-1:01", "a:1:2",
                                                       "intake-1.zzzzzzzz:1", "intake-1.0000000g:3",
                                                       "intake-1:" + "9" * 40, "Intake-1:1", ":1"]))
event = st.fixed_dictionaries({}, optional={
    "id": ids, "job": st.text(max_size=70) | st.just("J1"), "type": st.sampled_from(["note", "created", "x"]) | json_values,
    "station": st.sampled_from(["intake", ""]) | json_values, "hlc": json_values | st.just([1, 2, "intake-1"]),
    "data": json_values, "sig": json_values | st.text(max_size=100)})
VALID = {"id": "rogue-1:5", "job": "J1", "type": "note", "station": "intake", "hlc": [1, 0, "rogue-1"],
         "data": {}}
bad_ids = st.sampled_from(["rogue-1:\u00b2", "rogue-1:\u0663", "rogue-1:0", "rogue-1:01", "rogue-1:1\n",
                           "rogue-1.zzzzzzzz:1", "rogue-1:" + "9" * 40, "rogue-1:-1", "rogue-1: 1"])
near_valid = st.one_of(  # one field wrong, the rest right: the cases that reach deep into the store
    bad_ids.map(lambda i: {**VALID, "id": i}),
    st.tuples(st.sampled_from(sorted(VALID)), json_values).map(lambda kv: {**VALID, kv[0]: kv[1]}),
    st.text(max_size=80).map(lambda j: {**VALID, "job": j}),
    st.integers(-2, 2**70).map(lambda w: {**VALID, "hlc": [w, 0, "rogue-1"]}),
)
payloads = st.one_of(
    st.binary(max_size=300),
    st.lists(near_valid, min_size=1, max_size=3).map(lambda evs: json.dumps({"v": 1, "events": evs}).encode()),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.lists(event, max_size=3).map(lambda evs: json.dumps({"v": 1, "events": evs}).encode()),
    st.dictionaries(st.text(max_size=40), json_values, max_size=3).map(
        lambda v: json.dumps({"v": 1, "vector": v, "ask": True}).encode()),
    st.fixed_dictionaries({"state": json_values, "session": json_values, "incarnation": json_values}).map(
        lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"job": json_values, "status": json_values, "heads": json_values, "events": json_values})
    .map(lambda v: json.dumps(v).encode()),
    st.fixed_dictionaries({"command": st.sampled_from(["status", "note", "job", "launch", "cancel", "zz"]) | json_values,
                           "args": json_values, "id": json_values}).map(lambda v: json.dumps(v).encode()),
)
topics = st.one_of(
    st.sampled_from([f"{LINE}/events/rogue-1", f"{LINE}/events/laser-1", f"{LINE}/sync/rogue-1",
                     f"{LINE}/node/rogue-1/status", f"{LINE}/node/intake-1/status", f"{LINE}/job/J1",
                     f"{LINE}/job/ghost", f"{LINE}/node/intake-1/cmd", HA_STATUS_TOPIC]),
    st.text(max_size=60))


@pytest.fixture(scope="module")
def node(tmp_path_factory):
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    line_file = sim_line_file(tmp / "line.toml", ["intake-1"])
    station = tmp / "intake.toml"
    station.write_text(f"""[node]
id = "intake-1"
line = "demo"
data_dir = "{tmp / 'data'}"
line_file = "{line_file}"
key_file = "{write_sim_key(tmp / 'node.key', 'intake-1')}"
pin_factory = "mock"
[mqtt]
host = "127.0.0.1"
port = {free_port()}
[station]
kind = "intake"
carriers = ["T01", "T02"]
""")
    n = Node(load_station(station), load_line(line_file))
    n.start()  # the broker port is closed: the network thread keeps retrying, harmlessly
    yield n
    n.shutdown()


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.tuples(topics, payloads, st.booleans()), min_size=1, max_size=5))
def test_any_message_on_any_topic_leaves_the_loop_running_and_the_ledger_clean(node, messages):
    before = node.store.vector()
    for topic, payload, retain in messages:
        node.apply(Event("mqtt_message", {"gen": node.sync.network.generation, "topic": topic,
                                          "payload": payload, "props": None, "retain": retain}))
    node._guarded("flush", node.sync.flush)
    assert node.counters["errors"] == 0, "a handler let an exception escape"
    assert node.store.vector() == before  # nothing unsigned or forged got in
    assert node.commands.dispatch("ping", {}, remote=True).result == "pong"


def test_the_classic_killers_through_a_real_broker_leave_every_node_up(broker, line):
    intake, laser = line["intake-1"], line["laser-1"]
    wait_until(lambda: intake.status()["mqtt"]["connected"] and laser.status()["mqtt"]["connected"])
    job = intake.launch("FUZZ1")
    rogue = TestClient(broker.port, "rogue-1", password_of("rogue-1"), topics=())
    try:
        killers = [b'{"v": 1, "events": [{"id": "rogue-1:\\u00b2", "job": "FUZZ1", "type": "note", '
                   b'"station": "intake", "hlc": [1, 0, "rogue-1"], "data": {}}]}',
                   b'{"v": 1, "vector": {"intake-1:\\u00b2": 1, "x": "y"}}', b"\xff\xfe" * 1000,
                   b'{"v": 1, "events": [' + b"[]," * 1000 + b"{}]}", b"{" * 5000]
        for payload in killers:
            for topic in (f"{LINE}/events/rogue-1", f"{LINE}/sync/rogue-1", f"{LINE}/node/rogue-1/status",
                          f"{LINE}/job/FUZZ1"):
                rogue.publish(topic, payload)
        wait_until(lambda: laser.status()["mqtt"]["dropped"] >= len(killers), 20, "the drops to be counted")
    finally:
        rogue.close()
    for node in (intake, laser):
        assert node.command("ping") == "pong"
        assert node.status()["counters"]["errors"] == 0
    assert laser.command("job FUZZ1")["created_by"] == job
