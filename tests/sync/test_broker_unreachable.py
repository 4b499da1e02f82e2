"""A node that cannot reach its broker says why, in its log once per cause (not once per retry)
and in its status while it lasts: a host name that does not resolve, nothing listening, a
refused password."""

from __future__ import annotations

import time

import pytest

from edge.sim.line import SimBroker, SimNode, free_port, password_of, wait_until
from edge.sync import broker_cause


@pytest.mark.parametrize(("error", "cause"), [
    ("[Errno -2] Name or service not known", "dns"),
    ("[Errno -3] Temporary failure in name resolution", "dns"),
    ("[Errno 111] Connection refused", "refused"),
    ("Not authorized", "not_authorised"),
    ("Bad user name or password", "not_authorised"),
    ("[Errno 101] Network is unreachable", "network"),
    ("no CONNACK", "no_answer"),
    ("something else", "other"),
])
def test_each_error_text_has_its_cause(error, cause):
    assert broker_cause(error) == cause


def node_with_broker(tmp_path, host: str, port: int) -> SimNode:
    node = SimNode(tmp_path, "laser-1", port, kind="laser")
    node.config.write_text(node.config.read_text().replace('host = "127.0.0.1"', f'host = "{host}"'))
    return node


@pytest.mark.parametrize(("host", "cause", "words"), [
    ("no-such-hub.invalid", "dns", "its host name does not resolve"),
    ("127.0.0.1", "refused", "nothing listens there"),
])
def test_an_unreachable_broker_is_told_once_per_cause_and_shown_in_the_status(tmp_path, host, cause, words):
    node = node_with_broker(tmp_path, host, free_port()).start()
    try:
        problem = wait_until(lambda: node.status()["mqtt"].get("problem"), 20, "the status to say why")
        assert problem["cause"] == cause and problem["host"] == host
        time.sleep(3)  # a few more retries
        log = node.log.read_text()
        assert log.count("cannot reach the broker") == 1, log[-2000:]
        assert words in log
    finally:
        node.close()


def test_a_wrong_password_is_told_once_and_cleared_once_it_is_right(tmp_path):
    broker = SimBroker(tmp_path / "hub", users={"laser-1": password_of("laser-1")}).start()
    node = SimNode(tmp_path, "laser-1", broker.port, kind="laser", password="not-the-password")
    try:
        node.start()
        problem = wait_until(lambda: node.status()["mqtt"].get("problem"), 20, "the refusal")
        assert problem["cause"] == "not_authorised"
        time.sleep(3)
        assert node.log.read_text().count("cannot reach the broker") == 1
        assert "refuses this node's user name or password" in node.log.read_text()
    finally:
        node.close()
        broker.kill()
