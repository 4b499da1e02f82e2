"""A broker that only speaks MQTT 3.1.1: the node falls back from 5 by itself.

Mosquitto 2 speaks MQTT 5, so the old broker here is a few lines of socket code that answers
a version-5 CONNECT the way a 3.1.1 broker does (CONNACK 0x01, unacceptable protocol version).
"""

from __future__ import annotations

import socket
import threading

from edge.sim.line import SimNode, free_port, wait_until


class OldBroker:
    """Accepts connections, records each CONNECT's protocol level, refuses level 5."""

    def __init__(self) -> None:
        self.port = free_port()
        self.levels: list[int] = []
        self.server = socket.socket()
        self.server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.server.bind(("127.0.0.1", self.port))
        self.server.listen(8)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(5)
                data = conn.recv(1024)
                if len(data) < 9 or data[0] != 0x10:
                    continue
                i = 1
                while data[i] & 0x80:  # remaining length, variable-length encoded
                    i += 1
                level = data[i + 1 + 2 + 4]  # after protocol name length (2) and "MQTT" (4)
                self.levels.append(level)
                conn.sendall(bytes([0x20, 0x02, 0x00, 0x01 if level == 5 else 0x00]))
                if level != 5:
                    conn.recv(1024)  # let the node subscribe and publish, then hang up

    def close(self) -> None:
        self.server.close()


def test_node_falls_back_to_mqtt311_when_the_broker_refuses_5(tmp_path):
    old = OldBroker()
    node = SimNode(tmp_path, "laser-1", old.port, kind="laser").start()
    try:
        wait_until(lambda: 4 in old.levels, 20, "a 3.1.1 CONNECT after the refusal")
        assert old.levels[0] == 5 and old.levels[old.levels.index(4):] == [4] * (len(old.levels) - old.levels.index(4))
        assert node.command("ping") == "pong"
    finally:
        node.kill()
        old.close()
    assert "falling back to 3.1.1" in node.log.read_text()
