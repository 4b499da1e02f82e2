"""A node's face on MQTT: the sync it starts, the retained states it publishes (jobs, the
station), Home Assistant discovery, and MQTT commands answered from the node's one command
registry. Runs on the node's loop thread, like everything the node owns."""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from edge.control import Reply
from edge.homeassistant import HA_STATUS_TOPIC, discovery
from edge.topics import COMMAND, MAX_SMALL_PAYLOAD

if TYPE_CHECKING:
    from edge.node import Node

log = logging.getLogger("edge.node")
STATE_HEARTBEAT_S = 60.0  # the retained state is republished on change, and this often anyway


class NodeMqtt:
    """What one node publishes and answers over MQTT (`node.sync` is the link, once started)."""

    def __init__(self, node: Node):
        self.node = node
        self.published_state: bytes | None = None
        self.state_published_at = 0.0
        self.unpublished_jobs: set[str] = set()
        self.jobs_to_check: set[str] = set()  # jobs whose retained union may be this node's to publish

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
        self.node.sync.start()

    def publish_job(self, job: str) -> None:
        """The job's retained state, never older than the retained one (more events); offline,
        the job is remembered and published on reconnect."""
        if self.node.sync is None or self.node.store is None:
            return
        if not self.node.store.in_hot_set(job):  # archived: its retained topic was cleared for good
            self.unpublished_jobs.discard(job)
            return
        state = self.node.store.job(job)
        if state is None or state.status == "unknown":
            return
        if not self.node.sync.may_publish_job(job, state.heads):
            self.unpublished_jobs.discard(job)
            return
        payload = json.dumps(state.to_json()).encode()
        if self.node.sync.publish(self.node.sync.topics.job(job), payload, retain=True) is None:
            self.unpublished_jobs.add(job)
        else:
            self.node.sync.published_job(job, state.heads)
            self.unpublished_jobs.discard(job)

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
        """The retained station state: published when it changed, and every STATE_HEARTBEAT_S."""
        if self.node.sync is None or not self.node.sync.connected:
            return
        node = self.node
        body = {"state": node.state, "reason": node.reason, "job": node.current_job, "counters": node._counters()}
        payload = json.dumps(body, sort_keys=True).encode()
        topic = self.node.sync.topics.state(self.node.config.node.id)
        now = time.monotonic()
        if payload == self.published_state and now - self.state_published_at < STATE_HEARTBEAT_S:
            return
        if self.node.sync.publish(topic, payload, retain=True) is not None:
            self.published_state, self.state_published_at = payload, now

    def _announce(self) -> None:
        self.published_state = None
        config = self.node.config
        for topic, payload in discovery(config.node.id, config.node.line, config.station.kind, config.station.title):
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
