"""The broker link of `edge web`: one read-only subscriber (account `web`, which the broker lets
read `fabrique/+/public/#` and nothing else), on paho's own thread, reconnecting by itself.

It tells a `Sink` what happens (connected, subscribed, a message, lost with a reason) and keeps
nothing itself: the model decides what that means for the pages. A frozen broker is noticed by
MQTT keepalive (no answer within `keepalive` seconds), a dead one at once.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.reasoncodes import ReasonCode

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Who hears the link's news (edge.web.app.LiveLine); called on paho's thread."""

    def connected(self) -> None: ...
    def subscribed(self) -> None: ...
    def lost(self, problem: str) -> None: ...
    def message(self, topic: str, payload: bytes, retained: bool) -> None: ...


def _why(reason: Any) -> str:
    """A connection's failure in a technician's words."""
    if isinstance(reason, ReasonCode):
        if reason.value in (0x86, 0x87, 0x8C):  # bad user name or password, not authorized, bad auth method
            return f"the broker refused the account ({reason.getName()}): check --user and --password-file"
        if reason.value == 0x8D:
            return "the broker stopped answering (keepalive)"
        return reason.getName()
    if isinstance(reason, MQTTErrorCode):
        return {MQTTErrorCode.MQTT_ERR_KEEPALIVE: "the broker stopped answering (keepalive)",
                MQTTErrorCode.MQTT_ERR_CONN_LOST: "connection lost"}.get(reason, mqtt.error_string(reason))
    return str(reason)


class PublicFeed:
    """Subscribes to `topic` on host:port as `user` and feeds `sink`; `start` returns at once, an
    unreachable broker is tried again every 1-3 s.

    MQTT 5 first; a broker that answers "unsupported protocol version" (the cloud's NATS speaks
    only 3.1.1) is spoken to in 3.1.1 from then on. The client id is the account and a random
    suffix: several instances may share an account in the cloud, and the hub's broker replaces
    any id by the account's name anyway (hub.conf)."""

    RESUBSCRIBE_S = 2.0  # a refused subscription is asked again after this, then twice as long...
    RESUBSCRIBE_MAX_S = 30.0  # ...up to this

    def __init__(self, host: str, port: int, user: str, password: str, topic: str, sink: Sink,
                 keepalive: int = 5):
        self.host, self.port, self.topic, self.sink = host, port, topic, sink
        self.user, self.password, self.keepalive = user, password, keepalive
        self.client_id = f"{user[:14]}-{secrets.token_hex(4)}"
        self.protocol = mqtt.MQTTv5
        self.client = self._client()
        self._said = ""  # the last problem logged, so a broker that stays away is logged once
        self._lock = threading.Lock()
        self._refused = False
        self._refusals = 0  # refused subscriptions in a row
        self.closed = False

    def _client(self) -> mqtt.Client:
        v5 = self.protocol == mqtt.MQTTv5
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=self.protocol,
                             clean_session=None if v5 else True)
        client.username_pw_set(self.user, self.password)
        client.reconnect_delay_set(1, 3)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        return client

    def start(self) -> PublicFeed:
        extra = {"clean_start": True} if self.protocol == mqtt.MQTTv5 else {}
        self.client.connect_async(self.host, self.port, keepalive=self.keepalive, **extra)
        self.client.loop_start()
        return self

    def close(self) -> None:
        with self._lock:
            self.closed = True
            self.client.disconnect()
            self.client.loop_stop()

    def _speak_311(self) -> None:
        """From paho's thread: a new 3.1.1 client in place of this one (on another thread)."""
        def swap() -> None:
            with self._lock:
                if self.closed:
                    return
                old = self.client
                old.disconnect()
                old.loop_stop()
                self.protocol = mqtt.MQTTv311
                self.client = self._client()
                self.start()
        log.info("broker %s:%d speaks MQTT 3.1.1 only: using it", self.host, self.port)
        threading.Thread(target=swap, name="mqtt-3.1.1", daemon=True).start()

    def _problem(self, problem: str) -> None:
        if problem != self._said:
            log.warning("broker %s:%d: %s", self.host, self.port, problem)
            self._said = problem
        self.sink.lost(problem)

    def _on_connect(self, client: mqtt.Client, _u: Any, _f: Any, reason: ReasonCode, _p: Any) -> None:
        if reason.is_failure and reason.value == 0x84 and self.protocol == mqtt.MQTTv5:
            self._speak_311()
            return
        if reason.is_failure:
            self._refused = True  # the disconnection that follows says less: keep this reason
            self._problem(_why(reason))
            return
        log.info("broker %s:%d: connected, reading %s", self.host, self.port, self.topic)
        self._said, self._refused, self._refusals = "", False, 0
        self.sink.connected()
        client.subscribe(self.topic, qos=1)

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        self._problem(f"cannot connect to {self.host}:{self.port}")

    def _on_disconnect(self, _c: mqtt.Client, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        if self.closed:
            log.info("broker %s:%d: disconnected", self.host, self.port)
            return
        if not self._refused:
            self._problem(_why(reason))

    def _on_subscribe(self, client: mqtt.Client, _u: Any, _mid: int, reasons: list[ReasonCode], _p: Any) -> None:
        if any(r.is_failure for r in reasons):
            self._problem(f"the broker refused the subscription to {self.topic} ({reasons[0].getName()})")
            # A cluster refuses while it re-elects after losing a node (NATS: no JetStream leader
            # for the session yet) and accepts a few seconds later; one whose permissions refuse
            # keeps refusing: asked again after 2, 4, 8... s (at most 30), and logged once.
            delay = min(self.RESUBSCRIBE_MAX_S, self.RESUBSCRIBE_S * 2 ** self._refusals)
            self._refusals += 1
            timer = threading.Timer(delay, self._resubscribe, args=(client,))
            timer.daemon = True
            timer.start()
            return
        self._said, self._refusals = "", 0
        self.sink.subscribed()

    def _resubscribe(self, client: mqtt.Client) -> None:
        with self._lock:
            if self.closed or client is not self.client or not client.is_connected():
                return  # closed, swapped for 3.1.1, or reconnecting: on_connect subscribes again
            client.subscribe(self.topic, qos=1)

    def _on_message(self, _c: mqtt.Client, _u: Any, msg: mqtt.MQTTMessage) -> None:
        self.sink.message(msg.topic, msg.payload, bool(msg.retain))


def now_ms() -> int:
    return time.time_ns() // 1_000_000
