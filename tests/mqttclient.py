"""One MQTT 5 client for the tests: a dashboard, an operator, Home Assistant or a forger.

It keeps every message it receives, in order, and `publish` waits for the broker's PUBACK
and returns its reason code (so an ACL refusal is visible)."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties


class TestClient:
    """Connects at once; `topics` are subscribed on every (re)connect."""

    __test__ = False  # not a pytest test class

    def __init__(self, port: int, user: str | None, password: str | None,
                 topics: tuple[str, ...] = ("fabrique/#",), client_id: str = "", clean: bool = True):
        self.seen: list[tuple[str, bytes, Any, bool]] = []
        self.acks: dict[int, Any] = {}
        self.cond = threading.Condition()
        ready = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id or uuid.uuid4().hex,
                                  protocol=mqtt.MQTTv5)
        if user:
            self.client.username_pw_set(user, password)

        def on_connect(c: mqtt.Client, _u: Any, _f: Any, _rc: Any, _p: Any) -> None:
            if topics:
                c.subscribe([(t, 1) for t in topics])  # ready once subscribed (on_subscribe)
            else:
                ready.set()

        self.subacks: set[int] = set()

        def on_subscribe(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
            with self.cond:
                self.subacks.add(mid)
                self.cond.notify_all()
            ready.set()

        self.client.on_connect = on_connect
        self.client.on_subscribe = on_subscribe
        self.client.on_message = self._message
        self.client.on_publish = self._puback
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 0 if clean else 3600
        self.client.connect("127.0.0.1", port, clean_start=clean, properties=props)
        self.client.loop_start()
        assert ready.wait(10), "could not connect"

    def _message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.seen.append((msg.topic, msg.payload, msg.properties, msg.retain))
            self.cond.notify_all()

    def _puback(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self.cond:
            self.acks[mid] = reason
            self.cond.notify_all()

    def subscribe(self, topic: str) -> None:
        """Subscribe and wait for the SUBACK: a message published after this returns is seen."""
        result, mid = self.client.subscribe(topic, qos=1)
        assert result == 0
        with self.cond:
            assert self.cond.wait_for(lambda: mid in self.subacks, 10), f"no SUBACK for {topic}"

    def publish(self, topic: str, payload: bytes | str, retain: bool = False, **kw: Any) -> Any:
        """Publish at QoS 1; return the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain, **kw)
        with self.cond:
            assert self.cond.wait_for(lambda: info.mid in self.acks, 10), "no PUBACK"
            return self.acks[info.mid]

    def on(self, topic: str) -> list[bytes]:
        """Every payload seen on `topic`, oldest first."""
        with self.cond:
            return [p for t, p, _props, _r in self.seen if t == topic]

    def json(self, topic: str) -> Any:
        """The last payload on `topic` as JSON, or None."""
        payloads = self.on(topic)
        return json.loads(payloads[-1]) if payloads and payloads[-1] else None

    def retained(self) -> set[str]:
        with self.cond:
            return {t for t, _p, _props, r in self.seen if r}

    def wait_for(self, pred: Callable[[str, bytes], bool], timeout: float = 10) -> list[tuple[str, bytes, Any]]:
        with self.cond:
            assert self.cond.wait_for(lambda: any(pred(t, p) for t, p, _, _ in self.seen), timeout), self.seen
            return [(t, p, props) for t, p, props, _ in self.seen if pred(t, p)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()
