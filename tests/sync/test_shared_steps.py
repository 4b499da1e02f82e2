"""Two lasers share the laser step, and a laser loses its power mid-step: real broker, real nodes.

An intake launches the job from a visitor's scan, the transfer (with the simulated belt behind
its pins) carries the tray to the laser, and two generic laser stations (laser-1, laser-2) take
it from there by themselves. With the broker down both lasers may take the step; once they meet
again every node keeps the same one winner, lists the conflict and loses no event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from edge.ledger import Event
from edge.sim.line import SimBroker, SimNode, converged, example_order, password_of, wait_until

NAMES = ("intake-1", "transfer-1", "laser-1", "laser-2")


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[SimBroker]:
    broker = SimBroker(tmp_path / "hub", users={n: password_of(n) for n in NAMES}).start()
    yield broker
    broker.kill()


@pytest.fixture
def start(tmp_path: Path, hub: SimBroker) -> Iterator[Callable[..., SimNode]]:
    """Starts a node of the line: `start("laser-2", reader=True)` gives laser-2 a carrier reader."""
    nodes: list[SimNode] = []

    def start(name: str, reader: bool = False) -> SimNode:
        kind = name.split("-")[0]
        if kind == "laser":
            hardware = (f'\n[hardware.reader]\ntype = "scanner"\nsource = "file"\n'
                        f'path = "{tmp_path / name / "reader.fifo"}"\n') if reader else ""
            node = SimNode(tmp_path, name, hub.port, kind=kind, hardware=hardware)
        else:
            node = SimNode(tmp_path, name, hub.port, kind=kind, example=True, world=kind == "transfer")
        nodes.append(node.start())
        return node

    yield start
    for node in nodes:
        node.kill()


def job_of(node: SimNode, job: str) -> dict[str, Any] | None:
    try:
        return node.command(f"job {job}")
    except RuntimeError:
        return None


def laser_step(state: dict[str, Any] | None) -> dict[str, Any]:
    return next(s for s in (state or {}).get("steps", []) if s["step"] == "laser") if state else {}


def scan(node: SimNode, text: str, device: str = "scanner") -> None:
    def once() -> bool:
        try:
            node.scan(text, device)
        except OSError:  # the node has not opened its FIFO yet
            return False
        return True
    wait_until(once, 10, f"{node.name}'s {device} to read")


def online(*nodes: SimNode, up: bool = True) -> None:
    wait_until(lambda: all(n.status()["mqtt"]["connected"] == up for n in nodes), 30,
               f"{', '.join(n.name for n in nodes)} {'online' if up else 'offline'}")


def to_the_laser(job: str, intake: SimNode, transfer: SimNode, *watching: SimNode) -> None:
    """A visitor's scan at intake; the transfer's belt carries the tray to the laser, as every
    `watching` node sees; then the belt is put in manual, so it takes the tray nowhere else.
    (It stays on the line: a node switched off while the broker is down may stay "online" in
    the broker's retained status, and then nobody re-sends its events to a peer lacking them.)"""
    scan(intake, example_order(job))
    for node in watching:
        wait_until(lambda node=node: (job_of(node, job) or {}).get("position") == "laser", 30,
                   f"{node.name} to see {job} at the laser")
    transfer.command("mode manual")


def union(*nodes: SimNode) -> dict[str, int]:
    out: dict[str, int] = {}
    for node in nodes:
        for origin, seq in node.status()["vector"].items():
            out[origin] = max(out.get(origin, 0), seq)
    return out


def laser_events(node: SimNode, job: str, type_: str) -> list[Event]:
    return sorted((e for e in node.ledger() if e.job == job and e.type == type_ and e.step == "laser"),
                  key=lambda e: e.key)


def meet_again(hub: SimBroker, *nodes: SimNode) -> dict[str, set[str]]:
    """The broker comes back; returns what each node held before, once all hold the same."""
    before = {n.name: set(n.ledger_ids()) for n in nodes}
    expected = union(*nodes)
    hub.start()
    wait_until(converged(list(nodes), expected), 60, "every node to hold every event")
    return before


def assert_nothing_lost_or_doubled(before: dict[str, set[str]], *nodes: SimNode) -> None:
    after = {n.name: n.ledger_ids() for n in nodes}
    for name, ids in after.items():
        assert len(ids) == len(set(ids)), f"{name} holds an event twice"
        assert before[name] <= set(ids), f"{name} lost events"
    assert len({frozenset(ids) for ids in after.values()}) == 1


def conflicts(state: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [(c["kind"], c["winner"], c["loser"]) for c in state["conflicts"]]


def test_two_lasers_cut_off_from_each_other_both_take_the_step_and_the_first_start_keeps_it(hub, start):
    intake, transfer, laser1, laser2 = start("intake-1"), start("transfer-1"), start("laser-1"), start("laser-2")
    online(intake, transfer, laser1, laser2)
    for laser in (laser1, laser2):
        laser.command("mode manual")  # they hear of the tray without taking it yet
    to_the_laser("TWOLZR", intake, transfer, laser1, laser2)
    hub.kill()
    online(laser1, laser2, up=False)
    for laser in (laser1, laser2):
        laser.command("mode auto")  # each sees the tray at the laser and the step free: each takes it
    for laser in (laser1, laser2):
        wait_until(lambda laser=laser: laser_step(job_of(laser, "TWOLZR")).get("status") == "done", 30,
                   f"{laser.name} to finish the step offline")
        assert laser_step(job_of(laser, "TWOLZR"))["node"] == laser.name

    before = meet_again(hub, intake, transfer, laser1, laser2)

    states = [job_of(n, "TWOLZR") for n in (intake, transfer, laser1, laser2)]
    assert all(s == states[0] for s in states)
    first, second = laser_events(intake, "TWOLZR", "step_started")
    done = {e.node: e for e in laser_events(intake, "TWOLZR", "step_done")}
    assert {first.node, second.node} == {"laser-1", "laser-2"} == set(done)
    step = laser_step(states[0])
    assert (step["status"], step["node"], step["attempts"]) == ("done", first.node, 1)
    both_at_work = second.key < done[first.node].key  # else the second start came after the first's done
    assert conflicts(states[0]) == [("step_contention" if both_at_work else "step_repeated", first.id, second.id),
                                    ("step_contention", first.id, done[second.node].id)]
    loser = laser1 if second.node == "laser-1" else laser2
    assert loser.status()["job"] is None  # it yielded: nothing of the step is its own any more
    assert_nothing_lost_or_doubled(before, intake, transfer, laser1, laser2)


def test_the_laser_whose_reader_saw_the_tray_keeps_the_step_though_it_started_later(hub, start):
    intake, transfer = start("intake-1"), start("transfer-1")
    laser1, laser2 = start("laser-1"), start("laser-2", reader=True)
    online(intake, transfer, laser1, laser2)
    laser1.command("mode manual")
    transfer.command("mode manual")  # the belt waits until laser-2 is cut off
    scan(intake, example_order("RDR2LZ"))
    carrier = wait_until(lambda: (job_of(laser2, "RDR2LZ") or {}).get("carrier"), 30, "laser-2 to know the tray")
    laser2.stop()  # cut off: it never hears that the belt brought the tray to the laser
    transfer.command("mode auto")
    to_the_laser("RDR2LZ", intake, transfer, laser1)
    hub.kill()
    online(laser1, up=False)
    laser2.start()
    laser1.command("mode auto")  # laser-1 takes the step first...
    scan(laser2, carrier, device="reader")  # ...but the tray is at laser-2, whose reader says so
    for laser in (laser1, laser2):
        wait_until(lambda laser=laser: laser_step(job_of(laser, "RDR2LZ")).get("status") == "done", 30,
                   f"{laser.name} to finish the step offline")

    before = meet_again(hub, intake, transfer, laser1, laser2)

    states = [job_of(n, "RDR2LZ") for n in (intake, transfer, laser1, laser2)]
    assert all(s == states[0] for s in states)
    by_laser = {e.node: e for e in laser_events(intake, "RDR2LZ", "step_started")}
    assert by_laser["laser-1"].key < by_laser["laser-2"].key  # laser-2 started later
    (reader_arrival,) = [e for e in laser_events(intake, "RDR2LZ", "step_arrived") if e.node == "laser-2"]
    assert reader_arrival.data["carrier"] == carrier
    step = laser_step(states[0])
    assert (step["status"], step["node"], step["attempts"]) == ("done", "laser-2", 1)
    winner, displaced = by_laser["laser-2"], by_laser["laser-1"]
    (laser1_done,) = [e for e in laser_events(intake, "RDR2LZ", "step_done") if e.node == "laser-1"]
    ignored = [("step_contention", winner.id, laser1_done.id)] if laser1_done.key > winner.key else []
    assert conflicts(states[0]) == [("step_contention", winner.id, displaced.id), *ignored]
    assert laser1.status()["job"] is None
    assert_nothing_lost_or_doubled(before, intake, transfer, laser1, laser2)


def test_a_laser_killed_mid_step_resumes_it_after_the_restart_and_never_starts_it_twice(hub, start):
    intake, transfer, laser = start("intake-1"), start("transfer-1"), start("laser-1")
    online(intake, transfer, laser)
    laser.command("mode manual")
    to_the_laser("B00TLZ", intake, transfer, laser)
    laser.command("mode auto")  # the step is started (durably) before this answers
    assert laser_step(job_of(laser, "B00TLZ"))["status"] == "running"
    laser.kill()  # power cut in the middle of engraving
    laser.start()
    wait_until(lambda: laser_step(job_of(laser, "B00TLZ")).get("status") == "done", 30, "the resumed step to end")

    step = laser_step(job_of(laser, "B00TLZ"))
    assert (step["node"], step["attempts"]) == ("laser-1", 1)
    own = sorted((e for e in laser.ledger() if e.job == "B00TLZ" and e.node == "laser-1"
                  and e.type.startswith("step_") and e.step == "laser"), key=lambda e: e.key)
    assert [e.type for e in own] == ["step_started", "step_progress", "step_done"]
    assert own[1].data == {"step": "laser", "resumed": True}
    wait_until(converged([intake, laser], union(intake, laser)), 30, "the intake to hold it too")
    assert len(laser_events(intake, "B00TLZ", "step_started")) == 1
