"""The MQTT topic tree and payload schemas: the single source of truth.

Everything that publishes or parses a topic goes through `Topics` and `Schema.check`, and
`docs/mqtt.md` is generated from this module (`python -m edge.topics`), so a dashboard
author reads exactly what the code does. Pure: no paho here.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from edge.ledger import JOB_RE, NODE_RE

ROOT = "fabrique"
HA_PREFIX = "homeassistant"
PAYLOAD_VERSION = 1
MAX_EVENTS_PAYLOAD = 256 * 1024
MAX_SMALL_PAYLOAD = 8 * 1024
PUBLIC_ID_RE = re.compile(r"[a-z2-7]{8}")  # edge.public.public_id


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
    Field("mode", str, False, "`auto` (the station works by itself) or `manual` (an operator drives it: "
                              "`mode` at the console)"),
    Field("safety", dict, False, "every safety circuit (`emergency_stop`, `door_interlock` devices): "
                                 "`{device: state}`, state `\"ok\"` or `\"tripped\"`"),
    Field("io", dict, False, "every digital input and output: `{device: value}`, its current value (a boolean) "
                             "(republished within a second of a change)"),
    Field("metrics", dict, False, "numbers to chart: `jobs_per_hour` (jobs whose step this node finished in "
                                  "the last hour), `step_last_s` and `step_mean_s` (its last step's duration "
                                  "and the mean of its last 20, seconds, null before the first), `queue` (open "
                                  "jobs whose next step is this station's kind and that no station is working on)"),
    Field("counters", dict, False, "events applied, scans, errors, outbox size, ..."),
), {"state": "busy", "reason": None, "job": "A7K2M9", "mode": "auto", "safety": {"estop": "ok", "lid": "ok"},
    "io": {"air_assist": True, "part_present": True}, "metrics": {"jobs_per_hour": 17, "step_last_s": 94.2,
                                                                 "step_mean_s": 101.5, "queue": 2},
    "counters": {"events": 311, "outbox": 0}})

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

PUBLIC_NODE = Schema("public/node", (
    Field("v", int, True, f"payload version, {PAYLOAD_VERSION}"),
    Field("node", str, True, "node id"),
    Field("kind", str, True, "station kind"),
    Field("title", str, True, "the station's name for the public: the line file's "
                              "`[public.stations.<kind>] title`, else the station file's `[station] title`"),
    Field("state", str, True, "`idle`, `busy`, `fault`, `manual`, `estop`, or `offline` (the node stopped "
                              "cleanly; a node that vanished says nothing: see `updated_ms`)"),
    Field("mode", str, True, "`auto` or `manual`"),
    Field("job", (str, type(None)), True, "the **public id** of the job being made here, or null (also for a "
                                          "job with no public face)"),
    Field("progress", (int, type(None)), True, "0-100 of the step being made here, or null"),
    Field("since_ms", int, True, "when the station entered `state` (Unix ms, the node's clock)"),
    Field("safety", dict, True, "every safety circuit (emergency stops, doors, lids): "
                                "`{device: state}`, state `\"ok\"` or `\"tripped\"`"),
    Field("updated_ms", int, True, "when this was published (Unix ms, the node's clock): republished every "
                                   "15 s, so a message older than 45 s is stale (the node is gone)"),
), {"v": 1, "node": "laser-1", "kind": "laser", "title": "Laser engraving", "state": "busy", "mode": "auto",
    "job": "k3q7xw2m", "progress": 40, "since_ms": 1795305600000, "safety": {"estop": "ok", "lid": "ok"},
    "updated_ms": 1795305612000})

PUBLIC_JOB = Schema("public/job", (
    Field("v", int, True, f"payload version, {PAYLOAD_VERSION}"),
    Field("id", str, True, "the job's public id (8 of `a-z 2-7`, from the QR's job secret: edge/public.py); "
                           "never the order id"),
    Field("product", str, True, "product id from the line file"),
    Field("product_title", str, True, "the product's title from the line file"),
    Field("name", str, True, "the engraved text as the line file's `[public] name` allows: `initial` (the "
                             "default) \"C.\", `first` the first word, `none` \"\""),
    Field("colour", (str, type(None)), True, "the ordered colour, or null when the product has no colour option"),
    Field("status", str, True, "as on `job/<job>`: `waiting`, `in_progress`, `failed`, `done`, `completed`, "
                               "`cancelled`"),
    Field("station", (str, type(None)), True, "the step in progress, else the next one to do (a station "
                                              "kind), or null"),
    Field("steps", list, True, "the route: `{step, status, started_ms, ended_ms, progress}` per step (`status` "
                               "pending, running, done, failed, skipped; times Unix ms or null; `progress` "
                               "0-100 or null); no node ids, no reasons"),
    Field("created_ms", int, True, "when the job was launched (Unix ms)"),
    Field("updated_ms", int, True, "the time of the job's latest ledger event (Unix ms)"),
    Field("sealed", str, True, "`edge.public.seal(secret, {\"text\": engraved text, \"options\": every "
                               "option})`: only the QR's holder opens it"),
), {"v": 1, "id": "k3q7xw2m", "product": "stand", "product_title": "Smartphone stand", "name": "A.",
    "colour": "red", "status": "in_progress", "station": "laser",
    "steps": [{"step": "intake", "status": "done", "started_ms": 1795305600000, "ended_ms": 1795305600000,
               "progress": 100},
              {"step": "laser", "status": "running", "started_ms": 1795305640000, "ended_ms": None, "progress": 40},
              {"step": "printer", "status": "pending", "started_ms": None, "ended_ms": None, "progress": None}],
    "created_ms": 1795305600000, "updated_ms": 1795305652000, "sealed": "Wm9v...base64...Q=="})

PUBLIC_SNAPSHOT = Schema("public/job/snapshot", (
    Field("v", int, True, f"payload version, {PAYLOAD_VERSION}"),
    Field("sealed", str, True, "`edge.public.seal(secret, {\"jpeg\": base64 JPEG at most 480 px wide, "
                               "\"verdict\": verdict, \"taken_ms\": Unix ms})`, "
                               "verdict `pass`, `reject` or `retake`"),
), {"v": 1, "sealed": "q8Xc...base64...A=="}, MAX_EVENTS_PAYLOAD)


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
    TopicSpec("public/node/<node>", True, 1, PUBLIC_NODE,
              "the station as the public sees it (live views; the `web` account reads only `public/`)"),
    TopicSpec("public/job/<public id>", True, 1, PUBLIC_JOB,
              "a job as the public sees it, under its public id; cleared with `job/<job>`"),
    TopicSpec("public/job/<public id>/snapshot", True, 1, PUBLIC_SNAPSHOT,
              "the inspection's picture of the job, sealed; cleared with the job"),
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

    def public_node(self, node: str) -> str:
        return f"{self.base}/public/node/{node}"

    def public_job(self, public_id: str) -> str:
        return f"{self.base}/public/job/{public_id}"

    def public_snapshot(self, public_id: str) -> str:
        return f"{self.base}/public/job/{public_id}/snapshot"

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
        if parts[0] == "public":
            return _parse_public(parts[1:])
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


def _parse_public(parts: list[str]) -> tuple[str, str] | None:
    if len(parts) == 2 and parts[0] == "node" and NODE_RE.fullmatch(parts[1]):
        return "public/node", parts[1]
    if len(parts) in (2, 3) and parts[0] == "job" and PUBLIC_ID_RE.fullmatch(parts[1]):
        if len(parts) == 2:
            return "public/job", parts[1]
        return ("public/job/snapshot", parts[1]) if parts[2] == "snapshot" else None
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
