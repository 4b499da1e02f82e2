"""The ledger's one promise, as a property: whatever mix of work, crashes, lost stores,
replaced SD cards, damaged hot sets and partitions, the nodes end with the same set of events
and no id is ever bound to two different events.

Real stores on disk, real signatures; the network is a pull of `events_since(vector)` between
two nodes, which is what anti-entropy does over MQTT.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from edge.ledger import Event, EventVerifier
from edge.sim.line import sim_signer
from edge.storage import HOT_FILE
from edge.store import Store

NODES = ("intake-1", "laser-1", "printer-1")
VERIFIER = EventVerifier({n: [sim_signer(n).public_key] for n in NODES})
SIGNERS = {n: sim_signer(n) for n in NODES}

node = st.sampled_from(range(len(NODES)))
op = st.one_of(
    st.tuples(st.just("append"), node, st.integers(1, 3)),
    st.tuples(st.just("pull"), node, node),
    st.tuples(st.just("crash"), node),
    st.tuples(st.just("lose_store"), node),
    st.tuples(st.just("new_card"), node),
    st.tuples(st.just("damage_hot"), node),
)


class Line:
    """Three nodes' stores in a temp dir; a node's data dir may be replaced (new SD card)."""

    def __init__(self, root: Path):
        self.root = root
        self.cards = [0] * len(NODES)
        self.stores = [self._open(i) for i in range(len(NODES))]
        self.bound: dict[str, str] = {}  # every id ever seen anywhere -> its event (canonical)

    def _dir(self, i: int) -> Path:
        return self.root / f"{NODES[i]}-card{self.cards[i]}"

    def _open(self, i: int) -> Store:
        return Store.open(self._dir(i), NODES[i], signer=SIGNERS[NODES[i]], verifier=VERIFIER)

    def see(self, events: list[Event]) -> None:
        for ev in events:
            canonical = ev.canonical()
            assert self.bound.setdefault(ev.id, canonical) == canonical, f"{ev.id} bound to two events"

    def apply(self, step: tuple) -> None:
        kind, i = step[0], step[1]
        if kind == "append":
            self.see([self.stores[i].append(f"J{n % 2}", "note", "intake", {"n": n}) for n in range(step[2])])
        elif kind == "pull":
            src, dst = self.stores[i], self.stores[step[2]]
            if src is not dst:
                report = dst.ingest(list(src.events_since(dst.vector())))
                assert not report.forged and not report.rejected
                self.see(report.added)
        elif kind == "crash":
            self.stores[i].close()
            self.stores[i] = self._open(i)
        elif kind == "lose_store":
            self.stores[i].close()
            shutil.rmtree(self._dir(i))
            self.stores[i] = self._open(i)
        elif kind == "new_card":
            self.stores[i].close()
            self.cards[i] += 1
            self.stores[i] = self._open(i)
        elif kind == "damage_hot":
            self.stores[i].close()
            for name in (HOT_FILE, HOT_FILE + ".prev"):
                path = self._dir(i) / name
                if path.exists():
                    path.write_bytes(b"\0" * 64)
            self.stores[i] = self._open(i)

    def heal(self) -> None:
        """The partition ends: everyone pulls from everyone until nothing changes."""
        for _ in range(len(NODES) + 1):
            for a in range(len(NODES)):
                for b in range(len(NODES)):
                    if a != b:
                        self.apply(("pull", a, b))

    def ids(self, i: int) -> dict[str, str]:
        return {e.id: e.canonical() for e in self.stores[i].events_since({})}

    def close(self) -> None:
        for store in self.stores:
            store.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(op, max_size=30))
def test_any_mix_of_crashes_lost_stores_new_cards_and_partitions_converges_without_reused_ids(steps):
    with tempfile.TemporaryDirectory() as tmp:
        line = Line(Path(tmp))
        try:
            for step in steps:
                line.apply(step)
            line.heal()
            held = [line.ids(i) for i in range(len(NODES))]
            assert held[0] == held[1] == held[2]  # the same set of events, byte for byte
            for event_id, canonical in held[0].items():
                assert line.bound[event_id] == canonical
        finally:
            line.close()


def test_a_store_lost_after_its_events_reached_a_peer_gets_them_back_and_numbers_past_them(tmp_path):
    line = Line(tmp_path)
    try:
        line.apply(("append", 0, 3))
        line.apply(("pull", 0, 1))
        before = set(line.ids(0))
        line.apply(("lose_store", 0))
        fresh = line.stores[0].append("J0", "note", "intake", {"after": "loss"})
        line.see([fresh])
        assert fresh.id not in before  # a new incarnation, so no clash with what peers hold
        line.heal()
        assert before | {fresh.id} == set(line.ids(0)) == set(line.ids(1))
    finally:
        line.close()
