"""The MQTT topic tree and payload schemas: the single source of truth.

Everything that publishes or parses a topic goes through `Topics` and `Schema.check`, and
`docs/mqtt.md` is generated from this module (`python -m edge.topics`), so a dashboard
author reads exactly what the code does. Pure: no paho here.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from edge.ledger import JOB_RE, NODE_RE

ROOT = "fabrique"
HA_PREFIX = "homeassistant"
PAYLOAD_VERSION = 1
MAX_EVENTS_PAYLOAD = 256 * 1024
MAX_SMALL_PAYLOAD = 8 * 1024


@dataclass(frozen=True)
class Field:
    name: str
    type: type | tuple[type, ...]
    required: bool
    description: str


@dataclass(frozen=True)
class Schema:
    """A JSON object payload: its fields, an example and a size limit."""

    name: str
    fields: tuple[Field, ...]
    example: dict[str, Any]
    max_bytes: int = MAX_SMALL_PAYLOAD

    def parse(self, payload: bytes) -> dict[str, Any]:
        """Decode and check a payload; raises ValueError naming what is wrong."""
        if len(payload) > self.max_bytes:
            raise ValueError(f"{self.name} payload of {len(payload)} bytes exceeds {self.max_bytes}")
        try:
            value = json.loads(payload)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.name} payload is not JSON: {exc}") from None
        return self.check(value)

    def check(self, value: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise ValueError(f"{self.name} payload must be a JSON object")
        for f in self.fields:
            if f.name not in value:
                if f.required:
                    raise ValueError(f"{self.name} payload lacks {f.name!r}")
                continue
            item = value[f.name]
            if isinstance(item, bool) and bool not in _types(f.type):
                raise ValueError(f"{self.name} field {f.name!r} must be {_type_words(f.type)}")
            if not isinstance(item, f.type):
                raise ValueError(f"{self.name} field {f.name!r} must be {_type_words(f.type)}")
        return value


def _types(t: type | tuple[type, ...]) -> tuple[type, ...]:
    return t if isinstance(t, tuple) else (t,)


def _type_words(t: type | tuple[type, ...]) -> str:
    names = {str: "a string", int: "an integer", bool: "a boolean", list: "a list", dict: "an object",
             float: "a number", type(None): "null"}
    return " or ".join(names.get(x, x.__name__) for x in _types(t))


STATUS = Schema("status", (
    Field("state", str, True, "`online` (birth) or `offline` (last will, or clean shutdown)"),
    Field("session", int, True, "boot counter of the node, never lower than a predecessor's (a node "
                                "on a new SD card goes past the session it finds retained); an `offline` "
                                "with a lower session than the last `online` is a late death notice of an "
                                "old session: ignore it"),
    Field("incarnation", str, False, "the node's store incarnation (8 hex digits; changes when the store "
                                     "is new or was rebuilt); its events' ids are `<node>.<incarnation>:<seq>`"),
    Field("version", str, False, "fabrique-edge version (birth only)"),
    Field("kind", str, False, "station kind (birth only)"),
    Field("protocol", int, False, "MQTT protocol version the node speaks: 5 or 4 (3.1.1)"),
), {"state": "online", "session": 12, "incarnation": "3f9a0c2e", "version": "0.1.0", "kind": "laser",
    "protocol": 5})

STATE = Schema("state", (
    Field("state", str, True, "`idle`, `busy`, `fault`, `manual` or `estop`"),
    Field("reason", (str, type(None)), False, "why the station is in fault or estop"),
    Field("job", (str, type(None)), False, "the job being made, if any"),
    Field("counters", dict, False, "events applied, scans, errors, outbox size, ..."),
    Field("hlc", list, False, "the node's hybrid logical clock [wall_ms, counter, node]"),
), {"state": "busy", "reason": None, "job": "A7K2M9", "counters": {"events": 311, "outbox": 0}})

EVENTS = Schema("events", (
    Field("v", int, True, f"payload version, {PAYLOAD_VERSION}"),
    Field("events", list, True, "ledger events `{id, job, type, station, hlc, data, sig}`, id "
                                "`<node>.<incarnation>:<seq>`, `sig` the base64 Ed25519 signature of the "
                                "origin node (key in the line file's `[nodes.keys]`); any origin: a node "
                                "re-sends other nodes' events a peer lacks, and every node verifies"),
), {"v": 1, "events": [{"id": "laser-1.3f9a0c2e:42", "job": "A7K2M9", "type": "step_done", "station": "laser",
                        "hlc": [1795305600000, 0, "laser-1"], "data": {"step": "laser"},
                        "sig": "p1Yq...86 base64 characters...Bw=="}]},
    MAX_EVENTS_PAYLOAD)

SYNC = Schema("sync", (
    Field("v", int, True, f"payload version, {PAYLOAD_VERSION}"),
    Field("vector", dict, True, "highest contiguous event seq this node holds, per origin "
                                "(`<node>.<incarnation>`)"),
    Field("session", int, False, "the sender's session"),
    Field("ask", bool, False, "true when the sender just connected: every peer answers with its vector"),
    Field("resumed", bool, False, "with `ask`: the broker kept the sender's session, so what it missed is "
                                  "being delivered; peers wait for its next vector before re-sending"),
), {"v": 1, "vector": {"intake-1.5b0e17aa": 120, "laser-1.3f9a0c2e": 87}, "session": 12, "ask": True})

JOB = Schema("job", (
    Field("job", str, True, "job id (the order id)"),
    Field("status", str, True, "`unknown` (events but no launch seen yet), `waiting`, `in_progress`, "
                               "`failed`, `done` (every step done or skipped), `completed` (handed over), "
                               "`cancelled`"),
    Field("product", str, False, "product id from the line file"),
    Field("order", dict, False, "the verified order: order_id, product, options, issued_at, expires_at, key_id"),
    Field("steps", list, False, "per route step: `step` (station kind), `status` (pending, running, done, "
                                "failed, skipped), `node`, `attempts`, `reason`, `on_route`"),
    Field("next_step", (str, type(None)), False, "the first step still to do"),
    Field("conflicts", list, False, "conflicts resolved by the ledger rules (duplicate_launch, "
                                    "step_contention, ...), for an operator to see"),
    Field("notes", list, False, "operators' notes, `node: text`"),
    Field("events", int, False, "how many ledger events the state folds"),
    Field("heads", dict, False, "per origin, the highest seq among the job's events folded: a node "
                                "publishes a job's state only from a view holding all of these, so "
                                "the retained state never goes backwards"),
), {"job": "A7K2M9", "status": "in_progress", "product": "stand",
    "order": {"order_id": "A7K2M9", "product": "stand", "options": {"colour": "red", "text": "ANNA"},
              "issued_at": 1795305600, "expires_at": 0, "key_id": "example-1"},
    "steps": [{"step": "intake", "status": "done", "node": "intake-1", "attempts": 1, "reason": "",
               "on_route": True},
              {"step": "laser", "status": "running", "node": "laser-1", "attempts": 1, "reason": "",
               "on_route": True}],
    "next_step": "printer", "conflicts": [], "notes": [], "events": 4,
    "heads": {"intake-1.5b0e17aa": 31, "laser-1.3f9a0c2e": 87}}, MAX_EVENTS_PAYLOAD)

COMMAND = Schema("cmd", (
    Field("command", str, True, "a command name (see docs/console.md; `help` lists them)"),
    Field("args", dict, False, "named arguments of the command"),
    Field("id", (str, int), False, "correlation id for MQTT 3.1.1 clients (MQTT 5 clients use "
                                   "correlation data instead); echoed in the response"),
), {"command": "status", "args": {}, "id": "dash-17"})

RESPONSE = Schema("cmd/response", (
    Field("ok", bool, True, "whether the command ran"),
    Field("result", (dict, list, str, int, float, bool, type(None)), False, "the command's result"),
    Field("error", str, False, "why it did not run (malformed, unknown command, not allowed remotely...)"),
    Field("id", (str, int), False, "the request's `id`, when it had one"),
), {"ok": True, "result": {"state": "idle"}, "id": "dash-17"})


@dataclass(frozen=True)
class TopicSpec:
    pattern: str
    retained: bool
    qos: int
    schema: Schema | None
    what: str


TREE = (
    TopicSpec("node/<node>/status", True, 1, STATUS, "online/offline (LWT) with birth info"),
    TopicSpec("node/<node>/state", True, 1, STATE, "station state: idle, busy, fault, manual, estop"),
    TopicSpec("events/<node>", False, 1, EVENTS, "ledger events published by `<node>` (batched)"),
    TopicSpec("sync/<node>", False, 1, SYNC, "`<node>`'s version vector, for anti-entropy"),
    TopicSpec("job/<job>", True, 1, JOB, "folded job state; cleared (empty retained) after archive"),
    TopicSpec("node/<node>/cmd", False, 1, COMMAND, "commands to `<node>`"),
    TopicSpec("node/<node>/cmd/response", False, 1, RESPONSE,
              "replies (MQTT 5: to the request's response topic, with its correlation data)"),
)


class Topics:
    """Topic names of one line: `fabrique/<line>/...`."""

    def __init__(self, line: str, root: str = ROOT):
        self.base = f"{root}/{line}"

    def status(self, node: str) -> str:
        return f"{self.base}/node/{node}/status"

    def state(self, node: str) -> str:
        return f"{self.base}/node/{node}/state"

    def events(self, node: str) -> str:
        return f"{self.base}/events/{node}"

    def sync(self, node: str) -> str:
        return f"{self.base}/sync/{node}"

    def job(self, job: str) -> str:
        return f"{self.base}/job/{job}"

    def cmd(self, node: str) -> str:
        return f"{self.base}/node/{node}/cmd"

    def cmd_response(self, node: str) -> str:
        return f"{self.base}/node/{node}/cmd/response"

    def subscriptions(self, node: str) -> list[str]:
        """What a node subscribes to: every status, peers' events and vectors, the retained job
        states (so it never publishes an older one), its commands."""
        return [f"{self.base}/node/+/status", f"{self.base}/events/+", f"{self.base}/sync/+",
                f"{self.base}/job/+", self.cmd(node)]

    def response_ok(self, node: str, topic: str) -> bool:
        """A reply may go only to `node/<node>/cmd/response` or below it, and not to a wildcard."""
        base = self.cmd_response(node)
        return (topic == base or topic.startswith(base + "/")) and not any(c in topic for c in "#+\0")

    def parse(self, topic: str) -> tuple[str, str] | None:
        """`fabrique/demo/events/laser-1` -> ("events", "laser-1"); None if not one of ours."""
        if not topic.startswith(self.base + "/"):
            return None
        parts = topic[len(self.base) + 1:].split("/")
        if len(parts) == 2 and parts[0] == "job":
            return ("job", parts[1]) if JOB_RE.fullmatch(parts[1]) else None
        if len(parts) < 2 or not NODE_RE.fullmatch(parts[1]):
            return None
        if len(parts) == 2 and parts[0] in ("events", "sync"):
            return parts[0], parts[1]
        if len(parts) == 3 and parts[0] == "node" and parts[2] in ("status", "state", "cmd"):
            return parts[2], parts[1]
        if len(parts) >= 4 and parts[0] == "node" and parts[2:4] == ["cmd", "response"]:
            return "cmd/response", parts[1]
        return None


def ha_config_topic(component: str, node: str, object_id: str) -> str:
    """Home Assistant discovery: `homeassistant/<component>/<node>/<object>/config`."""
    return f"{HA_PREFIX}/{component}/{node}/{object_id}/config"


def markdown() -> str:
    """The topic table and payload schemas as Markdown (the generated part of docs/mqtt.md)."""
    out = ["| topic (under `fabrique/<line>/`) | retained | QoS | what |", "|---|---|---|---|"]
    for spec in TREE:
        out.append(f"| `{spec.pattern}` | {'yes' if spec.retained else 'no'} | {spec.qos} | {spec.what} |")
    for spec in TREE:
        schema = spec.schema
        if schema is None:
            continue
        out += ["", f"### `{spec.pattern}`", "", f"JSON object, at most {schema.max_bytes} bytes.", "",
                "| field | type | required | meaning |", "|---|---|---|---|"]
        for f in schema.fields:
            out.append(f"| `{f.name}` | {_type_words(f.type)} | {'yes' if f.required else 'no'} | "
                       f"{f.description} |")
        out += ["", "```json", json.dumps(schema.example, indent=2), "```"]
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
