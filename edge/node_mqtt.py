"""A node's face on MQTT: the sync it starts, the retained states it publishes (jobs, the
station, their public faces for the live views), Home Assistant discovery, and MQTT commands
answered from the node's one command registry. Runs on the node's loop thread, like everything
the node owns (a snapshot's thumbnail is made on a thread of its own, then posted back)."""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edge.control import Reply
from edge.homeassistant import HA_STATUS_TOPIC, discovery
from edge.ledger import Event, JobState, fold
from edge.live import (
    StationMetrics,
    latest_snapshot,
    public_id_of,
    public_job,
    public_node,
    public_snapshot,
    secret_of,
    thumbnail,
)
from edge.public import public_id
from edge.topics import COMMAND, MAX_SMALL_PAYLOAD

if TYPE_CHECKING:
    from edge.node import Node

log = logging.getLogger("edge.node")
STATE_HEARTBEAT_S = 60.0  # the retained state is republished on change, and this often anyway
PUBLIC_HEARTBEAT_S = 15.0  # public/node/<node> too: older than 3 heartbeats, the live views call it gone


class NodeMqtt:
    """What one node publishes and answers over MQTT (`node.sync` is the link, once started)."""

    def __init__(self, node: Node):
        self.node = node
        self.published_state: bytes | None = None
        self.state_published_at = 0.0
        self.unpublished_jobs: set[str] = set()
        self.jobs_to_check: set[str] = set()  # jobs whose retained union may be this node's to publish
        self.published_public: bytes | None = None  # public/node payload as last sent, its time left out
        self.public_published_at = 0.0
        self.metrics = StationMetrics(node.config.node.id, node.config.station.kind)
        self.safety_seen: dict[str, str] = {}
        self.snapshots_sent: dict[str, str] = {}  # job -> the snapshot published (its path under files/)
        self.snapshots_making: set[str] = set()
        self.snapshots_unsent: dict[str, tuple[str, bytes, str]] = {}  # job -> (topic, payload, path), offline
        node.on("public_snapshot", self._snapshot_made)

    def start(self) -> None:
        mqtt = self.node.config.mqtt
        if not mqtt.enabled or self.node.store is None:
            log.info("MQTT disabled: running stand-alone")
            return
        from edge.sync import MqttLink, Sync  # paho only where MQTT is used

        password = None
        if mqtt.password_file is not None:
            try:
                password = mqtt.password_file.read_text(encoding="utf-8").strip()
            except OSError as exc:
                log.error("[mqtt] password_file %s: %s; connecting without a password",
                          mqtt.password_file, exc.strerror or exc)
        link = MqttLink(mqtt.host, mqtt.port, mqtt.username, password, mqtt.keepalive, mqtt.tls,
                        str(mqtt.ca_file) if mqtt.ca_file else None, mqtt.protocol)
        node = self.node.config.node
        self.node.sync = Sync(node.id, node.line, self.node.config.station.kind, link, self.node.store, self.node.post,
                         self.node.session, window=mqtt.inflight, batch=mqtt.batch,
                         on_ingest=self.node._on_ingest, on_command=self.on_command,
                         on_session=self.node._on_session, on_disk_error=self.node._disk_fault)
        self.node.sync.backlog = lambda: not self.node.queue.empty()
        self.node.sync.extra_subscriptions.append(HA_STATUS_TOPIC)
        self.node.sync.message_hooks[HA_STATUS_TOPIC] = self._ha_status
        self.node.sync.on_connect_hooks += [self._announce, self.publish_state, self._jobs_to_republish]
        self.node.sync.after_connect_hooks.append(self._republish_jobs)
        self._seed_metrics()
        self.node.sync.start()

    def publish_job(self, job: str) -> None:
        """The job's retained state, never older than the retained one (more events), and its
        public face; offline, the job is remembered and published on reconnect."""
        store, sync = self.node.store, self.node.sync
        if sync is None or store is None:
            return
        if not store.in_hot_set(job):  # archived: its retained topic was cleared for good
            self.unpublished_jobs.discard(job)
            return
        events = store.job_events(job)
        state = fold(job, events) if events else None
        if state is None or state.status == "unknown":
            return
        self._check_snapshot(state, events)
        if not sync.may_publish_job(job, state.heads):
            self.unpublished_jobs.discard(job)
            return
        payload = json.dumps(state.to_json()).encode()
        if sync.publish(sync.topics.job(job), payload, retain=True) is None:
            self.unpublished_jobs.add(job)
        else:
            sync.published_job(job, state.heads)
            self.unpublished_jobs.discard(job)
            self._publish_public_job(state, events)

    def _publish_public_job(self, state: JobState, events: list[Event]) -> None:
        created_ms = next((e.hlc.wall_ms for e in events if e.id == state.created_by), 0)
        found = public_job(state, created_ms, self.node.line)
        if found is not None:
            pid, body = found
            self.node.sync.publish(self.node.sync.topics.public_job(pid), json.dumps(body).encode(), retain=True)

    def job_archived(self, job: str) -> None:
        """A job left the hot set: its retained topics (state, public face, snapshot) are cleared
        by every node that recorded events of it."""
        store, sync = self.node.store, self.node.sync
        if store is None:
            return
        events = store.job_events(job)
        state = fold(job, events)
        self.metrics.observe_state(state)  # finished in the last second before the archive
        self.snapshots_sent.pop(job, None)
        self.snapshots_unsent.pop(job, None)
        if sync is None:
            return
        sync.forget_job(job)
        if not any(e.node == self.node.config.node.id for e in events):
            return
        sync.publish(sync.topics.job(job), b"", retain=True)
        pid = public_id_of(state)
        if pid is not None:
            sync.publish(sync.topics.public_job(pid), b"", retain=True)
            sync.publish(sync.topics.public_snapshot(pid), b"", retain=True)

    # -- the inspection's picture, for the visitor
    def _check_snapshot(self, state: JobState, events: list[Event]) -> None:
        """A picture this node took of the job and has not published: a thumbnail is made on a
        thread (decoding a camera frame takes the loop too long), then `_snapshot_made`."""
        job, secret = state.job, secret_of(state)
        shot = latest_snapshot(events, self.node.config.node.id)
        if shot is None or not secret or job in self.snapshots_making or self.snapshots_sent.get(job) == shot.path:
            return
        root = (Path(self.node.config.node.data_dir) / "files").resolve()
        path = (root / shot.path).resolve()
        if root not in path.parents:
            log.warning("job %s: snapshot %r is outside %s: not published", job, shot.path[:100], root)
            self.snapshots_sent[job] = shot.path
            return
        topic, post = self.node.sync.topics.public_snapshot(public_id(secret)), self.node.post
        self.snapshots_making.add(job)

        def work() -> None:
            out: dict[str, Any] = {"job": job, "path": shot.path, "topic": topic}
            try:
                body = public_snapshot(secret, thumbnail(path.read_bytes()), shot.verdict, shot.taken_ms)
                out["payload"] = json.dumps(body).encode()
            except (OSError, ValueError) as exc:  # rotated out, unreadable: the page shows none
                out["error"] = str(exc)
            post("public_snapshot", out)

        threading.Thread(target=work, name="public-snapshot", daemon=True).start()

    def _snapshot_made(self, event: Any) -> None:
        data, store, sync = event.data, self.node.store, self.node.sync
        job = data["job"]
        self.snapshots_making.discard(job)
        if store is None or sync is None or not store.in_hot_set(job):
            return  # archived meanwhile: its topics are cleared, not to be filled again
        if "error" in data:
            log.warning("job %s: snapshot %s not published: %s", job, data["path"], data["error"])
            self.snapshots_sent[job] = data["path"]
        elif sync.publish(data["topic"], data["payload"], retain=True) is None:
            self.snapshots_unsent[job] = (data["topic"], data["payload"], data["path"])
        else:
            self.snapshots_sent[job] = data["path"]
            self.snapshots_unsent.pop(job, None)
        events = store.job_events(job)  # a retake's newer picture came meanwhile?
        if events:
            self._check_snapshot(fold(job, events), events)

    def _send_unsent_snapshots(self) -> None:
        for job, (topic, payload, path) in sorted(self.snapshots_unsent.items()):
            if self.node.sync.publish(topic, payload, retain=True) is not None:
                self.snapshots_sent[job] = path
                del self.snapshots_unsent[job]

    def _jobs_to_republish(self) -> None:
        """On connect: jobs changed here while offline (also before a restart: their events
        are still in the outbox) are noted, to be published once the retained states are in;
        and every open job is checked again, for a broker that lost power restores the
        retained states of its last save, older than what the line knows."""
        if self.node.store is not None:
            self.unpublished_jobs |= {e.job for e in self.node.store.outbox_peek(self.node.store.outbox_size())}
            self.jobs_to_check |= {s.job for s in self.node.store.open_jobs()}

    def _republish_jobs(self) -> None:
        for job in sorted(self.unpublished_jobs):
            self.publish_job(job)
        self._send_unsent_snapshots()
        self.publish_unions()  # older retained than this node's view: its latest event's node says so

    def publish_unions(self) -> None:
        """The node of a job's latest event publishes the union once it holds it (one node,
        the same one everywhere: no storm of identical retained states)."""
        jobs, self.jobs_to_check = self.jobs_to_check, set()
        if self.node.store is None or self.node.sync is None or not self.node.sync.connected:
            return
        for job in sorted(jobs):
            state = self.node.store.job(job)
            if state is not None and state.last_node == self.node.config.node.id:
                self.publish_job(job)

    def publish_state(self) -> None:
        """The retained station state: published when it changed, and every STATE_HEARTBEAT_S;
        then its public face (every PUBLIC_HEARTBEAT_S)."""
        node, store = self.node, self.node.store
        jobs = store.open_jobs(include_closed=True) if store is not None else []
        for state in jobs:
            self.metrics.observe_state(state)
        if node.sync is None or not node.sync.connected:
            return
        body = {"state": node.state, "reason": node.reason, "job": node.current_job, "mode": node.mode,
                "safety": self.safety(), "io": self.io(),
                "metrics": self.metrics.reading(node.now_ms(), [s for s in jobs if s.is_open]),
                "counters": node._counters()}
        payload = json.dumps(body, sort_keys=True).encode()
        topic = node.sync.topics.state(node.config.node.id)
        now = time.monotonic()
        due = payload != self.published_state or now - self.state_published_at >= STATE_HEARTBEAT_S
        if due and node.sync.publish(topic, payload, retain=True) is not None:
            self.published_state, self.state_published_at = payload, now
        self.publish_public_node()

    def publish_public_node(self, state: str | None = None) -> None:
        """`public/node/<node>`: on change and every PUBLIC_HEARTBEAT_S; `state` "offline" says goodbye."""
        node, sync = self.node, self.node.sync
        if sync is None or not sync.connected:
            return
        kind = node.config.station.kind
        current = None
        if node.store is not None and node.current_job is not None and state is None:
            current = next((s for s in node.store.open_jobs() if s.job == node.current_job), None)
        step = current.step(kind) if current is not None else None
        progress = step.progress if step is not None and step.status == "running" else None
        now_ms = node.now_ms()
        body = public_node(node.config.node.id, kind, self.public_title(), state or node.state, node.mode,
                           public_id_of(current) if current is not None else None, progress,
                           now_ms if state else node.state_since_ms, self.safety(), now_ms)
        timeless = json.dumps({**body, "updated_ms": 0}, sort_keys=True).encode()
        now = time.monotonic()
        if timeless == self.published_public and now - self.public_published_at < PUBLIC_HEARTBEAT_S:
            return
        if sync.publish(sync.topics.public_node(node.config.node.id), json.dumps(body).encode(),
                        retain=True) is not None:
            self.published_public, self.public_published_at = timeless, now

    def public_title(self) -> str:
        """The station's name in public: `[public.stations.<kind>] title`, else `[station] title`."""
        station = self.node.config.station
        story = self.node.line.public.stations.get(station.kind) if self.node.line is not None else None
        return (story.title if story is not None else "") or station.title or station.kind

    def safety(self) -> dict[str, str]:
        """Every safety circuit: "ok" or "tripped" (its last reading, once the board is closed)."""
        for name, circuit in self.node.board.safety.items():
            try:
                self.safety_seen[name] = "tripped" if circuit.tripped else "ok"
            except Exception:  # closed at shutdown: the goodbye keeps the last reading
                self.safety_seen.setdefault(name, "tripped")
        return dict(self.safety_seen)

    def io(self) -> dict[str, bool]:
        """Every digital input and output's current value."""
        out: dict[str, bool] = {}
        for group in (self.node.board.inputs, self.node.board.outputs):
            for name, device in group.items():
                try:
                    out[name] = device.value
                except Exception:  # a device being opened again, or closed at shutdown
                    continue
        return out

    def _seed_metrics(self) -> None:
        """Jobs this node finished before a restart still count for the hour: those archived in
        the newest archive segment (the hot set is seen at every tick)."""
        store = self.node.store
        try:
            for job in sorted(store.archive.tail_jobs):
                for _job, record in store.archive.records(job):
                    steps = record.get("state", {}).get("steps") if isinstance(record.get("state"), dict) else None
                    if isinstance(steps, list):
                        self.metrics.observe(job, [s for s in steps if isinstance(s, dict)])
        except OSError as exc:
            log.warning("metrics: could not read the archive: %s", exc)

    def _announce(self) -> None:
        self.published_state = self.published_public = None
        config = self.node.config
        public = self.node.line.public.url if self.node.line is not None else ""
        hardware = {name: device.type for name, device in config.hardware.items()}
        for topic, payload in discovery(config.node.id, config.node.line, config.station.kind, config.station.title,
                                        hardware, public.lower() + "/" if public else ""):
            self.node.sync.publish(topic, payload, retain=True)

    def _ha_status(self, _topic: str, payload: bytes, _props: Any) -> None:
        if payload.strip() == b"online":
            log.info("Home Assistant is back: announcing this node again")
            self._announce()
            self.publish_state()

    def on_command(self, message: dict[str, Any], v5: bool) -> dict[str, Any]:
        payload, props = message["payload"], message["props"]
        response_topic = getattr(props, "ResponseTopic", None) if v5 and props is not None else None
        correlation = getattr(props, "CorrelationData", None) if v5 and props is not None else None
        request_id: Any = None
        if len(payload) > MAX_SMALL_PAYLOAD:
            reply = Reply(False, error=f"command payload of {len(payload)} bytes exceeds {MAX_SMALL_PAYLOAD}")
        else:
            try:
                body = COMMAND.parse(payload)
                request_id = body.get("id")
                reply = self.node.commands.dispatch(body["command"], body.get("args"), remote=True)
            except ValueError as exc:
                reply = Reply(False, error=str(exc))
        if not reply.ok:
            self.node.counters["rejected_commands"] = self.node.counters.get("rejected_commands", 0) + 1
            log.warning("MQTT command refused: %s", reply.error)
        answer = reply.to_json()
        if request_id is not None:
            answer["id"] = request_id
        from edge.sync import PacketTypes, Properties

        sync, me = self.node.sync, self.node.config.node.id
        if response_topic and not sync.topics.response_ok(me, response_topic):
            log.warning("MQTT command asked for a reply on %r: replies go only under %s/",
                        response_topic[:200], sync.topics.cmd_response(me))
            answer = {"ok": False, "error": f"response topic must be under {sync.topics.cmd_response(me)}/",
                      **({"result": answer["result"]} if answer.get("ok") and "result" in answer else {})}
            response_topic = None
            self.node.counters["rejected_commands"] = self.node.counters.get("rejected_commands", 0) + 1
        out = None
        if response_topic:
            out = Properties(PacketTypes.PUBLISH)
            if correlation is not None:
                out.CorrelationData = correlation
        sync.publish(response_topic or sync.topics.cmd_response(me), json.dumps(answer, default=str).encode(),
                     properties=out)
        return answer
