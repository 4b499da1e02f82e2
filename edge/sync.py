"""MQTT replication of a node's ledger (paho-mqtt 2.x, MQTT 5 with a 3.1.1 fallback).

Threads: one network thread owns the paho client's socket (connect, loop, reconnect with
jittered backoff) and only *posts* what happened to the node loop. Everything that touches
the store, the outbox or the peers' table runs on the node loop (`Sync.handle`).

Guarantees:
- the outbox is on disk; an event leaves it only when the broker PUBACKs the message that
  carried it *with a success reason code*. A refusal (MQTT 5 reason >= 0x80, e.g. 135 "Not
  authorized") keeps the events in the outbox, is logged once per cause, shows in `status`,
  and the drain tries again later. A new paho client is made per connection, so nothing waits
  in paho's memory: after a reconnect the drain starts again from the outbox (a duplicate is
  harmless);
- the drain is flow controlled: at most `window` messages in flight, `batch` events each;
- anti-entropy: a node publishes its version vector on connect and every `resync_s`; a
  peer that sees a vector lacking events re-sends them if it is responsible for their
  origin (the origin node when online, else the lowest-id online node that has them); a
  node that lost its store is sent its own history back by the others;
- consumers are idempotent: ingest deduplicates by event id and verifies each new event's
  signature; a batch that cannot be written (disk full) is dropped whole and comes back by
  anti-entropy;
- retained job state never goes backwards: a node publishes `job/<job>` only from a view
  holding more events than the retained one it saw (nodes subscribe to `job/+` for that).
"""

from __future__ import annotations

import contextlib
import json
import logging
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edge import __version__
from edge.ledger import ORIGIN_RE, Event, node_of
from edge.store import Store
from edge.topics import EVENTS, JOB, PAYLOAD_VERSION, STATUS, SYNC, Topics

log = logging.getLogger(__name__)
Post = Callable[[str, dict[str, Any]], None]
SESSION_EXPIRY_S = 7 * 86400
UNREACHED = 1 << 62
GRACE_S = 2.0  # an event acked this recently may still be on its way to a peer: not missing yet
RESEND_AFTER_S = 10.0  # a range re-sent to everyone is not re-sent again for this long
REFUSED_RETRY_S = 5.0  # after the broker refused a publish, the drain waits this long
MAX_VECTOR_ORIGINS = 4096
BACKLOG_WAIT_S = 10.0


@dataclass
class MqttLink:
    """Where and how to connect (from `[mqtt]` plus the password read from its file)."""

    host: str
    port: int
    username: str | None = None
    password: str | None = None
    keepalive: int = 15
    tls: bool = False
    ca_file: str | None = None
    protocol: int = 5  # 5, or 4 for MQTT 3.1.1


@dataclass
class Peer:
    online: bool = False
    # heard from it live (not a retained copy) since this node's last connect: a broker that
    # lost power may restore an old retained "online" of a node that has stopped since
    live: bool = False
    session: int = -1
    vector: dict[str, int] = field(default_factory=dict)
    vector_seen: bool = False


class Network(threading.Thread):
    """Connects, runs paho's loop and reconnects forever; reports by posting events."""

    def __init__(self, sync: Sync, min_delay: float = 0.2, max_delay: float = 1.0):
        super().__init__(name=f"mqtt-{sync.node}", daemon=True)
        self.sync = sync
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.stopping = threading.Event()
        self.client: mqtt.Client | None = None
        self.generation = 0
        self.connack = threading.Event()
        self.jitter = random.Random()  # its own generator: not the shared one tests may seed

    def run(self) -> None:
        delay = self.min_delay
        while not self.stopping.is_set():
            self.generation += 1
            self.connack.clear()
            client = self.sync.make_client(self.generation)
            up_since = time.monotonic()
            try:
                link = self.sync.link
                if link.protocol == 5:
                    props = Properties(PacketTypes.CONNECT)
                    props.SessionExpiryInterval = SESSION_EXPIRY_S
                    client.connect(link.host, link.port, link.keepalive, clean_start=False, properties=props)
                else:
                    client.connect(link.host, link.port, link.keepalive)
                sock = client.socket()
                if isinstance(sock, socket.socket):  # small messages: no Nagle delay
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self.client = client
                self._loop(client, link.keepalive)
            except (OSError, ValueError) as exc:
                self.sync.post("mqtt_unreachable", {"gen": self.generation, "error": str(exc)})
            finally:
                self.client = None
                sock = client.socket()
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.close()
            if time.monotonic() - up_since > 10:
                delay = self.min_delay
            self.stopping.wait(delay * self.jitter.uniform(0.5, 1.5))
            delay = min(delay * 2, self.max_delay)

    def _loop(self, client: mqtt.Client, keepalive: int) -> None:
        started = time.monotonic()
        while not self.stopping.is_set():
            rc = client.loop(timeout=0.05)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                return
            if not self.connack.is_set() and time.monotonic() - started > max(2.0, keepalive * 1.5):
                self.sync.post("mqtt_unreachable", {"gen": self.generation, "error": "no CONNACK"})
                return
        # stopping: give the goodbye (offline status, DISCONNECT) a moment to leave
        end = time.monotonic() + 2
        while time.monotonic() < end and client.loop(timeout=0.05) == MQTTErrorCode.MQTT_ERR_SUCCESS:
            pass

    def stop(self) -> None:
        self.stopping.set()


class Sync:
    """Replicates one node's ledger; `handle()` runs on the node loop, nothing else touches state."""

    def __init__(self, node: str, line: str, kind: str, link: MqttLink, store: Store, post: Post,
                 session: int, window: int = 16, batch: int = 500, resync_s: float = 30.0,
                 on_ingest: Callable[[list[Event]], None] | None = None,
                 on_command: Callable[[dict[str, Any], bool], dict[str, Any]] | None = None,
                 on_session: Callable[[int], None] | None = None,
                 on_disk_error: Callable[[OSError], None] | None = None):
        self.node = node
        self.kind = kind
        self.link = link
        self.store = store
        self.post = post
        self.session = session
        self.window = window
        self.batch = batch
        self.resync_s = resync_s
        self.on_ingest = on_ingest
        self.on_command = on_command
        self.on_session = on_session
        self.on_disk_error = on_disk_error
        self.backlog: Callable[[], bool] = lambda: False  # the node says when its queue is not empty
        self.resumed = False  # the broker kept our session: what we missed is queued for us
        self.topics = Topics(line)
        self.network = Network(self)
        self.connected_gen = 0
        self.inflight: dict[int, list[str]] = {}
        self.inflight_ids: set[str] = set()
        self.repairs: list[Event] = []
        self.repaired: dict[str, tuple[int, float]] = {}
        self.recent_acks: list[tuple[float, int]] = []
        self.vector_changed_at = time.monotonic()
        self.peers: dict[str, Peer] = {}
        self.counters = {"published": 0, "received": 0, "ingested": 0, "duplicates": 0, "dropped": 0, "clamped": 0,
                         "forged": 0, "refused": 0, "repaired": 0, "connects": 0}
        self.refusals: dict[str, str] = {}  # cause -> broker's reason, logged once per cause
        self.problem: dict[str, Any] | None = None  # why the broker cannot be reached, while it cannot
        self.refused_until = 0.0
        self.retained_jobs: dict[str, dict[str, int]] = {}  # job -> heads of the retained state seen
        self.republish_at: float | None = None
        self.last_vector_sent = 0.0
        self.vector_wanted = False
        self.received: list[Any] = []
        self.extra_subscriptions: list[str] = []
        self.on_connect_hooks: list[Callable[[], None]] = []
        self.after_connect_hooks: list[Callable[[], None]] = []  # once retained messages are in
        self.message_hooks: dict[str, Callable[[str, bytes, Any], None]] = {}

    # ------------------------------------------------------------ network thread side
    def make_client(self, gen: int) -> mqtt.Client:
        proto = mqtt.MQTTv5 if self.link.protocol == 5 else mqtt.MQTTv311
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.node, protocol=proto,
                             clean_session=None if proto == mqtt.MQTTv5 else False)
        if self.link.username:
            client.username_pw_set(self.link.username, self.link.password)
        if self.link.tls:
            client.tls_set(ca_certs=self.link.ca_file)
        client.max_inflight_messages_set(max(self.window * 2, 20))
        client.max_queued_messages_set(0)
        client.will_set(self.topics.status(self.node), self._status("offline"), qos=1, retain=True)

        def on_connect(_c: Any, _u: Any, flags: Any, reason: Any, props: Any) -> None:
            if not reason.is_failure:
                self.network.connack.set()
            self.post("mqtt_connected", {"gen": gen, "ok": not reason.is_failure, "reason": str(reason),
                                         "session_present": bool(getattr(flags, "session_present", False))})

        def on_disconnect(_c: Any, _u: Any, _flags: Any, reason: Any, _props: Any) -> None:
            self.post("mqtt_disconnected", {"gen": gen, "reason": str(reason)})

        def on_publish(_c: Any, _u: Any, mid: int, reason: Any, _props: Any) -> None:
            refused = str(reason) if getattr(reason, "is_failure", False) else None
            self.post("mqtt_puback", {"gen": gen, "mid": mid, "refused": refused})

        def on_subscribe(_c: Any, _u: Any, mid: int, reasons: Any, _props: Any) -> None:
            refused = [str(r) for r in reasons if getattr(r, "is_failure", False)]
            if refused:
                self.post("mqtt_suback", {"gen": gen, "mid": mid, "refused": refused})

        def on_message(_c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
            self.post("mqtt_message", {"gen": gen, "topic": msg.topic, "payload": msg.payload,
                                       "props": getattr(msg, "properties", None), "retain": msg.retain})

        client.on_connect = on_connect
        client.on_disconnect = on_disconnect
        client.on_publish = on_publish
        client.on_subscribe = on_subscribe
        client.on_message = on_message
        return client

    # ------------------------------------------------------------ loop side
    def start(self) -> None:
        self.network.start()

    def stop(self, timeout: float = 3.0) -> None:
        """Publish `offline` (a clean goodbye, so no will fires) and disconnect."""
        client = self._client()
        self.network.stop()
        if client is not None:
            try:
                client.publish(self.topics.status(self.node), self._status("offline"), qos=1, retain=True)
                client.disconnect()
            except (RuntimeError, ValueError, OSError) as exc:
                log.debug("goodbye not sent: %s", exc)
        self.network.join(timeout)

    @property
    def connected(self) -> bool:
        return self.connected_gen != 0 and self.connected_gen == self.network.generation

    def _client(self) -> mqtt.Client | None:
        return self.network.client if self.connected else None

    def handle(self, kind: str, data: dict[str, Any]) -> bool:
        """Apply one `mqtt_*` event on the loop; returns False for events of a dead connection."""
        if data.get("gen") != self.network.generation:
            return False
        if kind == "mqtt_connected":
            self._connected(data)
        elif kind == "mqtt_disconnected":
            self._lost(data["reason"])
        elif kind == "mqtt_unreachable":
            self._lost(data["error"])
        elif kind == "mqtt_puback":
            self._puback(data["mid"], data.get("refused"))
        elif kind == "mqtt_suback":
            self._refused("subscribe", ", ".join(data["refused"]))
        elif kind == "mqtt_message":
            self._message(data["topic"], data["payload"], data.get("props"), data.get("retain", False))
        return True

    def _connected(self, data: dict[str, Any]) -> None:
        if not data["ok"]:
            if self.link.protocol == 5 and "unsupported protocol version" in data["reason"].lower():
                log.warning("broker %s:%d does not speak MQTT 5: falling back to 3.1.1",
                            self.link.host, self.link.port)
                self.link.protocol = 4
                return
            self._cannot_reach(broker_cause(data["reason"]), f"refused the connection: {data['reason']}")
            return
        if self.problem is not None:
            log.info("reached the broker %s:%d again (it was: %s)", self.link.host, self.link.port,
                     self.problem["cause"])
            self.problem = None
        self.connected_gen = data["gen"]
        self.resumed = data.get("session_present", False)
        for peer in self.peers.values():
            peer.live = False
        self.counters["connects"] += 1
        self.inflight.clear()
        self.inflight_ids.clear()
        self.repairs.clear()
        client = self._client()
        assert client is not None
        log.info("connected to %s:%d (MQTT %s, session %d, outbox %d)", self.link.host, self.link.port,
                 "5" if self.link.protocol == 5 else "3.1.1", self.session, self.store.outbox_size())
        subs = self.topics.subscriptions(self.node) + self.extra_subscriptions
        if self.link.protocol == 5:
            client.subscribe([(t, SubscribeOptions(qos=1, noLocal=True)) for t in subs])
        else:
            client.subscribe([(t, 1) for t in subs])
        # retained messages of the subscriptions (our own last status, the jobs' states) come
        # before the broker reads our next packet: they hold the old values
        client.publish(self.topics.status(self.node), self._status("online"), qos=1, retain=True)
        self.retained_jobs.clear()
        self.republish_at = time.monotonic() + 1.0  # once the retained job states are in
        self.refused_until = 0.0
        for hook in self.on_connect_hooks:
            hook()
        self.send_vector(ask=True)
        self.drain()

    def _lost(self, why: str) -> None:
        if self.connected_gen:
            log.warning("lost the broker: %s (outbox %d, keeps working offline)", why, self.store.outbox_size())
        else:
            self._cannot_reach(broker_cause(why), why)
        self.connected_gen = 0
        self.inflight.clear()
        self.inflight_ids.clear()

    def _status(self, state: str) -> bytes:
        body: dict[str, Any] = {"state": state, "session": self.session, "incarnation": self.store.incarnation}
        if state == "online":
            body.update(version=__version__, kind=self.kind, protocol=self.link.protocol)
        return json.dumps(body).encode()

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, qos: int = 1,
                properties: Properties | None = None) -> int | None:
        """Publish if connected; returns the message id, or None when offline."""
        client = self._client()
        if client is None:
            return None
        info = client.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        return info.mid if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS else None

    # -- outbox drain
    def drain(self) -> None:
        """Fill the in-flight window from the repair queue, then from the outbox."""
        if self.refused_until and time.monotonic() < self.refused_until:
            return
        while self.connected and len(self.inflight) < self.window:
            own: list[str] = []
            if self.repairs:
                batch, self.repairs = self.repairs[:self.batch], self.repairs[self.batch:]
                self.counters["repaired"] += len(batch)
            else:
                pending = self.store.outbox_peek(len(self.inflight_ids) + self.batch)
                batch = [e for e in pending if e.id not in self.inflight_ids][:self.batch]
                own = [e.id for e in batch]
            if not batch:
                return
            payload = json.dumps({"v": PAYLOAD_VERSION, "events": [e.to_json() for e in batch]},
                                 separators=(",", ":")).encode()
            mid = self.publish(self.topics.events(self.node), payload)
            if mid is None:
                return
            self.inflight[mid] = own
            self.inflight_ids.update(own)
            self.counters["published"] += len(batch)

    def _puback(self, mid: int, refused: str | None = None) -> None:
        ids = self.inflight.pop(mid, None)
        if refused is not None:
            if ids:
                self.inflight_ids.difference_update(ids)  # still in the outbox: sent again later
                self.counters["refused"] += len(ids)
                self.refused_until = time.monotonic() + REFUSED_RETRY_S
            self._refused("publish", refused)
            return
        if ids:
            self.store.outbox_ack(ids)
            self.inflight_ids.difference_update(ids)
            self.recent_acks.append((time.monotonic(), min(int(i.rpartition(":")[2]) for i in ids)))
            if "publish" in self.refusals:
                log.info("the broker accepts this node's events again")
                del self.refusals["publish"]
        self.drain()

    def _refused(self, what: str, reason: str) -> None:
        """The broker said no: log once per cause, keep it for `status`."""
        if self.refusals.get(what) != reason:
            log.error("the broker refused a %s: %s (user %r; is [mqtt] username the node id, and is "
                      "the node in the broker's password file?)", what, reason, self.link.username)
        self.refusals[what] = reason

    # -- anti-entropy
    def send_vector(self, ask: bool = False) -> None:
        """Publish our version vector; `ask` asks every peer to answer with theirs (on connect).
        What arrived but is not written yet is written first: the vector says all we hold."""
        self.flush()
        payload: dict[str, Any] = {"v": PAYLOAD_VERSION, "vector": self.store.vector(), "session": self.session}
        if ask:
            payload["ask"] = True
            if self.resumed:
                payload["resumed"] = True
        log.debug("vector out%s: %s", " (asking)" if ask else "", payload["vector"])
        if self.publish(self.topics.sync(self.node), json.dumps(payload).encode()) is not None:
            self.last_vector_sent = time.monotonic()
            self.vector_wanted = False

    def tick(self) -> None:
        """Called by the node loop about once a second: periodic and stall-driven vectors, drain."""
        now = time.monotonic()
        if self.republish_at is not None and now >= self.republish_at and self.connected:
            self.republish_at = None
            for hook in self.after_connect_hooks:
                hook()
        # a node with a backlog of messages to apply would advertise a vector that lags what
        # it is about to hold, and bring duplicates on itself: it answers once caught up
        # (or after BACKLOG_WAIT_S, whatever happens)
        caught_up = not self.backlog() or now - self.last_vector_sent > BACKLOG_WAIT_S
        if self.connected and caught_up:
            stalled = now - self.vector_changed_at > GRACE_S and self._peers_ahead()
            if (self.vector_wanted or now - self.last_vector_sent >= self.resync_s
                    or (stalled and now - self.last_vector_sent > GRACE_S)):
                self.send_vector()
        self.recent_acks = [(t, seq) for t, seq in self.recent_acks if now - t < GRACE_S]
        self.drain()

    def _peers_ahead(self) -> bool:
        mine = self.store.vector()
        return any(n > mine.get(o, 0) for p in self.peers.values() for o, n in p.vector.items())

    def _responsible_for(self, stream: str, asker: str) -> bool:
        """Whether this node re-sends events of `stream` that `asker` lacks: the stream's node
        does when online (and is not the asker), else the lowest-id online node holding most.
        Online means its status says so and it was heard live since this node connected.
        A node that lost its store is sent its own earlier history by the others."""
        origin = node_of(stream)
        if origin == self.node:
            return True
        owner = self.peers.get(origin)
        if origin != asker and owner is not None and owner.online and owner.live:
            return False
        mine = self.store.vector().get(stream, 0)
        candidates = [(n, p.vector.get(stream, 0)) for n, p in self.peers.items()
                      if p.online and p.live and n not in (asker, origin)]
        best = max([mine] + [have for _n, have in candidates])
        holders = sorted([n for n, have in candidates if have == best] + ([self.node] if mine == best else []))
        return bool(holders) and holders[0] == self.node

    def _peer_vector(self, peer: str, vector: dict[str, int], resumed: bool = False) -> None:
        """A peer told us what it holds: re-send, to everyone, what it lacks and we answer for.

        An origin the peer's vector advanced on since its last one is still arriving there
        (from the broker's queue, or its own busy loop): re-sending it would only duplicate."""
        entry = self.peers.setdefault(peer, Peer())
        seen, before = entry.vector_seen, entry.vector
        entry.vector, entry.vector_seen = vector, True
        if resumed:  # the broker is delivering what it missed: judge by its next vector
            return
        mine = self.store.vector()
        log.debug("vector from %s: %s (mine %s)", peer, vector, mine)
        now = time.monotonic()
        floor = {o: UNREACHED for o in mine}
        for origin, have in mine.items():
            arriving = seen and vector.get(origin, 0) > before.get(origin, 0)
            if have > vector.get(origin, 0) and not arriving and self._responsible_for(origin, peer):
                upto, when = self.repaired.get(origin, (0, 0.0))
                floor[origin] = max(vector.get(origin, 0), upto if now - when < RESEND_AFTER_S else 0)
        if all(f == UNREACHED for f in floor.values()):
            return
        waiting = self.store.outbox_ids()  # the drain sends those
        just_acked = min((seq for _t, seq in self.recent_acks), default=UNREACHED)  # may still be in transit
        own = self.store.origin
        missing = [e for e in self.store.events_since(floor) if e.id not in waiting
                   and not (e.origin == own and e.seq >= just_acked)]
        if not missing:
            return
        for origin in {e.origin for e in missing}:
            self.repaired[origin] = (max(e.seq for e in missing if e.origin == origin), now)
        log.info("peer %s lacks %d event(s): re-sending", peer, len(missing))
        self.repairs.extend(missing)
        self.drain()

    # -- incoming
    def _message(self, topic: str, payload: bytes, props: Any, retain: bool) -> None:
        self.counters["received"] += 1
        parsed = self.topics.parse(topic)
        hook = self.message_hooks.get(topic)
        if hook is not None:
            hook(topic, payload, props)
            return
        if parsed is None:
            return self._drop(topic, "not a topic of this line")
        kind, who = parsed
        if not retain and who != self.node and kind in ("events", "sync"):
            self.peers.setdefault(who, Peer()).live = True
        try:
            if kind == "events":
                if who != self.node:
                    self._events(EVENTS.parse(payload))
            elif kind == "sync":
                if who != self.node:
                    body = SYNC.parse(payload)
                    if body.get("ask") is True:
                        # a peer just (re)connected and may have missed our vector: answer it
                        self.vector_wanted = True
                    self._peer_vector(who, parse_vector(body["vector"]), body.get("resumed") is True)
            elif kind == "status":
                self._status_seen(who, payload, live=not retain)
            elif kind == "job":
                self._job_seen(who, payload)
            elif kind == "cmd" and who == self.node and self.on_command is not None:
                self.on_command({"payload": payload, "props": props}, self.link.protocol == 5)
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            self._drop(topic, f"{type(exc).__name__}: {exc}")

    def _drop(self, topic: str, why: str) -> None:
        self.counters["dropped"] += 1
        log.warning("dropped a message on %s: %s", topic[:200], why[:300])

    def _events(self, body: dict[str, Any]) -> None:
        # events arriving is progress: a node busy ingesting a burst is not stalled, and
        # asking peers again then would only bring duplicates of what is in its queue
        self.vector_changed_at = time.monotonic()
        self.received.extend(body["events"])
        if len(self.received) >= 5000:
            self.flush()

    def flush(self) -> None:
        """Ingest what arrived (one durable write for all of it); the node calls this when its
        queue is empty, so a burst costs a few writes, not one per message."""
        if not self.received:
            return
        batch, self.received = self.received, []
        try:
            report = self.store.ingest(batch)
        except OSError as exc:  # nothing of the batch was kept: anti-entropy brings it back
            log.error("could not write %d received event(s): %s", len(batch), exc)
            if self.on_disk_error is not None:
                self.on_disk_error(exc)
            return
        if report.added:
            self.vector_changed_at = time.monotonic()
        self.counters["ingested"] += len(report.added)
        self.counters["duplicates"] += report.duplicates
        self.counters["forged"] += len(report.forged)
        if report.rejected:
            self.counters["dropped"] += len(report.rejected)
        self.counters["clamped"] += len(report.clamped)  # each told once a minute per peer by the clock
        if report.added and self.on_ingest is not None:
            self.on_ingest(report.added)

    def _status_seen(self, who: str, payload: bytes, live: bool = False) -> None:
        if not payload:
            return
        body = STATUS.parse(payload)
        if who == self.node:
            theirs = body.get("incarnation", "")
            if body["session"] >= self.session and theirs != self.store.incarnation:
                # a predecessor of this node (the SD card was replaced, the store lost) had
                # reached that session: go past it, so dashboards keep trusting our will
                self.session = body["session"] + 1
                log.warning("a predecessor of this node reached session %d: now session %d",
                            body["session"], self.session)
                if self.on_session is not None:
                    self.on_session(self.session)
                self._rearm_will()
            elif body["state"] == "offline" and body["session"] <= self.session and self.connected:
                # our old session's will, delivered late: say we are here
                self.publish(self.topics.status(self.node), self._status("online"), retain=True)
            return
        peer = self.peers.setdefault(who, Peer())
        if live:  # a goodbye (or a will) queued for us while we were away ends what came before it
            peer.live = body["state"] == "online"
        if body["state"] == "online":
            peer.online, peer.session = True, body["session"]
        elif body["session"] >= peer.session:
            peer.online, peer.session = False, body["session"]
        else:
            log.info("ignored a late offline notice of %s's old session %d", who, body["session"])

    def _rearm_will(self) -> None:
        """The will is fixed at CONNECT: reconnect so it carries the current session."""
        client = self._client()
        if client is not None:
            client.publish(self.topics.status(self.node), self._status("online"), qos=1, retain=True)
            client.disconnect()

    # -- retained job state
    def _job_seen(self, job: str, payload: bytes) -> None:
        if not payload:
            self.retained_jobs.pop(job, None)
            return
        self.retained_jobs[job] = parse_vector(JOB.parse(payload).get("heads", {}))

    def may_publish_job(self, job: str, heads: dict[str, int]) -> bool:
        """True if this node holds every event of the retained state of `job` it saw, and has
        more: a state published from here never drops an event a dashboard was shown."""
        retained = self.retained_jobs.get(job)
        if retained is None:
            return True
        mine = self.store.vector()
        return heads != retained and all(mine.get(o, 0) >= n for o, n in retained.items())

    def published_job(self, job: str, heads: dict[str, int]) -> None:
        self.retained_jobs[job] = dict(heads)

    def forget_job(self, job: str) -> None:
        self.retained_jobs.pop(job, None)

    def _cannot_reach(self, cause: str, detail: str) -> None:
        """Why the broker cannot be reached, in the log once per cause (not once per retry) and
        in the status while it lasts. What follows a known cause (the socket closing after a
        refused CONNACK: "protocol error") says nothing new."""
        if cause == "other" and self.problem is not None:
            return
        if self.problem is None or self.problem["cause"] != cause:
            log.warning("cannot reach the broker %s:%d: %s (%s); working offline, trying again", self.link.host,
                        self.link.port, CAUSES.get(cause, cause), detail[:200])
        self.problem = {"cause": cause, "detail": detail[:200], "host": self.link.host, "port": self.link.port}

    def status(self) -> dict[str, Any]:
        return {"connected": self.connected, "session": self.session, **self.counters,
                "refusals": dict(self.refusals), "problem": self.problem}


CAUSES = {
    "dns": "its host name does not resolve (DNS, /etc/hosts, or mDNS for .local names)",
    "refused": "nothing listens there (is mosquitto running, on this port?)",
    "not_authorised": "it refuses this node's user name or password ([mqtt] username, password_file, the "
                      "broker's password file)",
    "network": "no network route to it (Wi-Fi, cable, address)",
    "no_answer": "it does not answer (a firewall, a frozen broker, or not MQTT on that port)",
    "other": "see the detail",
}


def broker_cause(error: str) -> str:
    """The kind of reason a broker cannot be reached, from the error's text: one of CAUSES."""
    e = error.lower()
    if any(w in e for w in ("name or service not known", "name resolution", "nodename nor servname",
                            "no address associated", "getaddrinfo")):
        return "dns"
    if "connection refused" in e:
        return "refused"
    if "not authori" in e or "bad user name or password" in e or "bad username or password" in e:
        return "not_authorised"
    if "network is unreachable" in e or "no route to host" in e:
        return "network"
    if "no connack" in e or "timed out" in e:
        return "no_answer"
    return "other"


def parse_vector(value: Any) -> dict[str, int]:
    """A peer's version vector, checked: origin ids, positive integers, bounded in size."""
    if not isinstance(value, dict) or len(value) > MAX_VECTOR_ORIGINS:
        raise ValueError(f"vector must be an object of at most {MAX_VECTOR_ORIGINS} origins")
    out = {}
    for origin, n in value.items():
        if not isinstance(origin, str) or not ORIGIN_RE.fullmatch(origin):
            raise ValueError(f"vector origin {str(origin)[:80]!r} is not '<node>.<incarnation>'")
        if not isinstance(n, int) or isinstance(n, bool) or not 0 <= n < 10**18:
            raise ValueError(f"vector entry for {origin} is not a sequence number")
        out[origin] = n
    return out
