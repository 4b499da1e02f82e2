"""The topic tree is one source of truth: the docs are generated from it and parsing is strict."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from trailer import ROOT

from edge.topics import COMMAND, EVENTS, STATUS, TREE, Topics, markdown


def test_docs_mqtt_carries_the_generated_topic_tree_exactly():
    doc = (ROOT / "docs" / "mqtt.md").read_text()
    begin = doc.index("-->\n", doc.index("<!-- BEGIN GENERATED")) + 4
    end = doc.index("<!-- END GENERATED -->")
    assert doc[begin:end] == markdown(), "docs/mqtt.md is stale: regenerate it with python -m edge.topics"


def test_every_topic_of_the_tree_parses_back():
    t = Topics("demo")
    assert t.parse(t.events("laser-1")) == ("events", "laser-1")
    assert t.parse(t.sync("laser-1")) == ("sync", "laser-1")
    assert t.parse(t.status("laser-1")) == ("status", "laser-1")
    assert t.parse(t.state("laser-1")) == ("state", "laser-1")
    assert t.parse(t.cmd("laser-1")) == ("cmd", "laser-1")
    assert t.parse(t.cmd_response("laser-1")) == ("cmd/response", "laser-1")
    assert t.parse(t.job("A7K2M9")) == ("job", "A7K2M9")
    assert t.parse(t.public_node("laser-1")) == ("public/node", "laser-1")
    assert t.parse(t.public_job("k3q7xw2m")) == ("public/job", "k3q7xw2m")
    assert t.parse(t.public_snapshot("k3q7xw2m")) == ("public/job/snapshot", "k3q7xw2m")
    assert t.parse("fabrique/demo/public/job/A7K2M9") is None  # an order id is no public id
    assert t.parse("fabrique/other/events/laser-1") is None
    assert t.parse("fabrique/demo/events/Not A Node") is None
    assert len(TREE) == 10


def test_every_example_payload_passes_its_own_schema():
    for spec in TREE:
        assert spec.schema is not None
        assert spec.schema.parse(json.dumps(spec.schema.example).encode()) == spec.schema.example


@pytest.mark.parametrize("payload, why", [
    (b"", "not JSON"), (b"[1]", "must be a JSON object"), (b'{"v": 1}', "lacks 'events'"),
    (b'{"v": true, "events": []}', "'v' must be an integer"), (b"\xff\xfe", "not JSON"),
    (b'{"v": 1, "events": "x"}', "'events' must be a list"),
])
def test_malformed_events_payloads_are_refused_with_a_reason(payload, why):
    with pytest.raises(ValueError, match=why):
        EVENTS.parse(payload)


def test_oversized_payload_is_refused_before_parsing():
    with pytest.raises(ValueError, match="exceeds"):
        COMMAND.parse(b" " * (COMMAND.max_bytes + 1))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_schemas_refuse_with_valueerror_or_return_every_required_field(blob):
    for schema in (EVENTS, STATUS, COMMAND):
        try:
            value = schema.parse(blob)
        except ValueError:
            continue
        assert isinstance(value, dict) and all(f.name in value for f in schema.fields if f.required)
