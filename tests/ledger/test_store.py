"""The node's store on real files: recovery, dedupe, version vector, outbox, archive."""

from __future__ import annotations

import errno
import logging
import os
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ledger_kit import NOW, ROUTE, event

from edge.ledger import Event
from edge.store import HOT_FILE, Store, StoreBusy

LAUNCH = {"product": "stand", "route": list(ROUTE)}


def _three_events(data_dir) -> list[str]:
    with Store.open(data_dir, "intake-1") as store:
        return [store.append("J1", kind, "intake", LAUNCH if kind == "created" else {}).id
                for kind in ("created", "step_started", "step_done")]


def _ids(data_dir) -> list[str]:
    with Store.open(data_dir, "intake-1") as store:
        return [e.id for e in store.job_events("J1")]


def test_acknowledged_events_are_there_after_a_reboot(tmp_path):
    ids = _three_events(tmp_path)
    with Store.open(tmp_path) as store:
        assert store.node == "intake-1"
        assert [e.id for e in store.job_events("J1")] == ids
        assert store.job("J1").step("intake").status == "done"
        assert store.recovery == []


@pytest.mark.parametrize("damage", ["truncated", "zero_filled"])
def test_damaged_hot_file_falls_back_to_the_last_good_state(tmp_path, caplog, damage):
    ids = _three_events(tmp_path)
    hot = tmp_path / HOT_FILE
    size = hot.stat().st_size
    hot.write_bytes(hot.read_bytes()[: size // 2] if damage == "truncated" else b"\0" * size)
    with caplog.at_level(logging.WARNING, logger="edge.store"):
        assert _ids(tmp_path) == ids[:2]  # the write before the damaged one
    assert any("damaged" in r.message for r in caplog.records)
    assert len(list((tmp_path / "corrupt").iterdir())) == 1
    assert _ids(tmp_path) == ids[:2]  # and the store is clean again


def test_garbage_after_the_hot_file_loses_nothing(tmp_path):
    ids = _three_events(tmp_path)
    with open(tmp_path / HOT_FILE, "ab") as f:
        f.write(b"\x13\x37 half a sector of noise")
    assert _ids(tmp_path) == ids
    assert len(list((tmp_path / "corrupt").iterdir())) == 1


def test_store_with_every_file_destroyed_still_boots_empty(tmp_path):
    ids = _three_events(tmp_path)
    for name in (HOT_FILE, HOT_FILE + ".prev"):
        (tmp_path / name).write_bytes(b"\0" * 100)
    with Store.open(tmp_path, "intake-1") as store:
        assert store.open_jobs() == []
        new = store.append("J2", "note", "intake")
        # a new incarnation: the ids the lost store issued (peers hold them) are never reissued
        assert new.node == "intake-1" and new.seq == 1 and new.id not in ids
        assert new.origin != Event.from_json({"id": ids[0], "job": "J", "type": "note", "station": "intake",
                                              "hlc": [0, 0, "intake-1"]}).origin


@pytest.mark.parametrize("tail", [b'1234abcd\t"J2"\t{"state": {"job": "J2"}, "ev', b"\0" * 4096,
                                  b"garbage\nmore garbage\n"], ids=["torn", "zero_filled", "garbage"])
def test_damaged_archive_tail_is_cut_back_to_the_last_whole_record(tmp_path, tail):
    with Store.open(tmp_path, "intake-1") as store:
        store.append("J1", "created", "intake", LAUNCH)
        store.append("J1", "completed", "intake")
        assert store.archive_closed() == ["J1"]
    segment = next((tmp_path / "archive").glob("seg-*.jsonl"))
    good = segment.read_bytes()
    segment.write_bytes(good + tail)
    with Store.open(tmp_path, "intake-1") as store:
        assert store.job("J1").status == "completed"
        assert [r["job"] for r in store.archived_jobs()] == ["J1"]
        assert store.recovery
    assert segment.read_bytes() == good
    assert any(p.name.startswith("seg-") for p in (tmp_path / "corrupt").iterdir())


def test_closed_jobs_leave_the_hot_set_so_writes_stay_small(tmp_path):
    with Store.open(tmp_path, "intake-1") as store:
        store.append("J0", "created", "intake", LAUNCH)
        size_with_one_job = (tmp_path / HOT_FILE).stat().st_size
        for n in range(1, 60):
            store.append(f"J{n}", "created", "intake", LAUNCH)
            store.append(f"J{n}", "completed", "intake")
            store.archive_closed()
        store.outbox_ack(e.id for e in store.outbox_peek(1000))
        assert [s.job for s in store.open_jobs()] == ["J0"]
        assert (tmp_path / HOT_FILE).stat().st_size < 2 * size_with_one_job
        assert store.job("J42").status == "completed"


def test_remote_events_are_ingested_once_whatever_the_delivery(tmp_path):
    remote = [event("laser-1", s, "J1", "note", 10 + s, station="laser", text=str(s)) for s in (1, 2, 3)]
    with Store.open(tmp_path, "intake-1") as store:
        first = store.ingest([remote[2].to_json(), remote[0]])
        assert len(first.added) == 2
        assert store.vector()["laser-1"] == 1  # seq 2 still missing: the vector waits for it
        again = store.ingest(remote + remote)
        assert [e.id for e in again.added] == ["laser-1:2"]
        assert again.duplicates == 5
        assert store.vector()["laser-1"] == 3
    with Store.open(tmp_path) as store:
        assert store.ingest(remote).duplicates == 3
        assert len(store.job("J1").notes) == 3


def test_malformed_remote_event_is_rejected_not_stored(tmp_path):
    with Store.open(tmp_path, "intake-1") as store:
        report = store.ingest([{"id": "laser-1:x", "job": "J1"}, {"nonsense": True}])
        assert len(report.rejected) == 2
        assert store.vector() == {}


def test_remote_clock_from_the_future_is_clamped_and_reported(tmp_path):
    with Store.open(tmp_path, "intake-1", wall=lambda: 1_795_000_000_000) as store:
        report = store.ingest([event("laser-1", 1, "J1", "note", 9_000_000_000_000)])
        assert report.clamped and report.clamped[0].clamped
        assert store.append("J1", "note", "intake").hlc.wall_ms < 9_000_000_000_000


def test_hlc_survives_a_reboot_into_1970(tmp_path):
    with Store.open(tmp_path, "intake-1", wall=lambda: 1_795_000_000_000) as store:
        before = store.append("J1", "created", "intake", LAUNCH)
    with Store.open(tmp_path, "intake-1", wall=lambda: 0) as store:
        after = store.append("J1", "step_started", "intake")
    assert after.hlc > before.hlc
    assert [e.id for e in Store.open(tmp_path, readonly=True).job_events("J1")] == [before.id, after.id]


def test_outbox_keeps_unacknowledged_events_across_reboots(tmp_path):
    ids = _three_events(tmp_path)
    with Store.open(tmp_path) as store:
        assert [e.id for e in store.outbox_peek()] == ids
        assert store.outbox_ack([ids[0], "laser-1:9"]) == 1
    with Store.open(tmp_path) as store:
        assert [e.id for e in store.outbox_peek(limit=1)] == [ids[1]]


def test_events_since_gives_a_peer_what_it_lacks_including_archived_jobs(tmp_path):
    with Store.open(tmp_path, "intake-1") as store:
        store.append("J1", "created", "intake", LAUNCH)
        store.append("J1", "cancelled", "intake")
        store.archive_closed()
        store.append("J2", "created", "intake", LAUNCH)
        store.ingest([event("laser-1", 1, "J2", "note", 5)])
        me = store.origin
        assert [e.id for e in store.events_since({me: 1, "laser-1": 1})] == [f"{me}:3", f"{me}:2"]
        assert {e.id for e in store.events_since({})} == {f"{me}:1", f"{me}:2", f"{me}:3", "laser-1:1"}


def test_late_event_for_an_archived_job_joins_its_archive(tmp_path):
    with Store.open(tmp_path, "intake-1") as store:
        store.append("J1", "created", "intake", LAUNCH)
        store.append("J1", "completed", "intake")
        store.archive_closed()
    with Store.open(tmp_path) as store:
        store.ingest([event("laser-1", 1, "J1", "note", 5, station="laser", text="late")])
        assert store.open_jobs(include_closed=True) == []
        assert store.job("J1").notes == ["laser-1: late"]
        assert list(store.archived_jobs())[0]["notes"] == ["laser-1: late"]


def test_archive_interrupted_by_a_power_cut_is_finished_at_boot(tmp_path):
    with Store.open(tmp_path, "intake-1") as store:
        store.append("J1", "created", "intake", LAUNCH)
        store.append("J1", "completed", "intake")
        state = store.job("J1")
        store.archive.append([("J1", {"state": state.to_json(),
                                      "events": [e.to_json() for e in store.job_events("J1")]})])
    with Store.open(tmp_path) as store:  # power came back before the hot set was rewritten
        assert store.open_jobs(include_closed=True) == []
        assert len(store.job_events("J1")) == 2


def test_own_events_recovered_from_a_peer_are_never_reissued(tmp_path):
    with Store.open(tmp_path / "old", "intake-1") as store:
        lost = [store.append("J1", "note", "intake") for _ in range(3)]
    with Store.open(tmp_path / "new", "intake-1") as store:  # SD card replaced
        assert len(store.ingest(lost).added) == 3  # its own history, given back by a peer
        new = store.append("J1", "note", "intake")
        assert new.id not in {e.id for e in lost} and new.node == "intake-1"
        assert store.vector() == {lost[0].origin: 3, new.origin: 1}


def test_second_writer_is_refused_but_readers_are_welcome(tmp_path):
    with Store.open(tmp_path, "intake-1") as store:
        store.append("J1", "created", "intake", LAUNCH)
        with pytest.raises(StoreBusy):
            Store.open(tmp_path, "intake-1")
        reader = Store.open(tmp_path, readonly=True)
        assert reader.job("J1").status == "waiting"


def test_data_dir_of_another_node_is_refused(tmp_path):
    _three_events(tmp_path)
    with pytest.raises(ValueError, match="belongs to node 'intake-1'"):
        Store.open(tmp_path, "laser-1")


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2_000_000_000_000), st.booleans()), min_size=1, max_size=12))
def test_events_stay_in_order_across_reboots_whatever_the_wall_clock_says(steps):
    with tempfile.TemporaryDirectory() as tmp:
        stamps = []
        store = Store.open(tmp, "intake-1")
        for wall, reboot in steps:
            if reboot:
                store.close()
                store = Store.open(tmp, "intake-1", wall=lambda w=wall: w)
            store.wall = lambda w=wall: w
            stamps.append(store.append("J1", "note", "intake").hlc)
        store.close()
        assert stamps == sorted(stamps)
        assert len(set(stamps)) == len(stamps)


def test_note_on_an_archived_job_cut_off_by_a_power_cut_never_reuses_its_id(tmp_path):
    with Store.open(tmp_path, "intake-1") as store:
        store.append("J1", "created", "intake", LAUNCH)
        store.append("J1", "completed", "intake")
        store.archive_closed()
        me = store.origin
        note = event(me, 3, "J1", "note", store.clock.last.wall_ms + 10, text="late")
        store.archive.append([("J1", {"state": {"job": "J1"}, "events": [note.to_json()]})])  # then: power cut
    with Store.open(tmp_path) as store:
        after = store.append("J1", "note", "intake", {"text": "after reboot"})
        assert after.id == f"{me}:4"
        assert after.hlc > note.hlc
        assert [e.id for e in store.job_events("J1")] == [f"{me}:1", f"{me}:2", f"{me}:3", f"{me}:4"]


def test_pi_rebooting_into_1970_still_knows_an_old_order_has_expired(tmp_path):
    from ledger_kit import NOW, make_line, signed

    from edge.orders import verify_order

    with Store.open(tmp_path, "intake-1", wall=lambda: NOW * 1000) as store:
        store.append("J1", "note", "intake")
    with Store.open(tmp_path, "intake-1", wall=lambda: 0) as store:
        verdict = verify_order(signed(expires_at=NOW - 60), make_line(), store.best_time_s())
    assert verdict.reason == "expired"


def _refuse_writes(monkeypatch, errno_: int = errno.ENOSPC):
    """The disk refuses the next hot-set writes (the real-filesystem version of this runs a
    node on a full tmpfs: tests/sync/test_ledger_integrity.py)."""
    from edge import storage

    def full(*_a, **_k):
        raise OSError(errno_, os.strerror(errno_))

    monkeypatch.setattr(storage.HotStorage, "flush", full)


def test_an_append_the_disk_refuses_leaves_no_trace_and_frees_its_seq(tmp_path, monkeypatch):
    with Store.open(tmp_path, "intake-1") as store:
        first = store.append("J1", "created", "intake", LAUNCH)
        before = (store.vector(), store.outbox_ids(), [e.id for e in store.job_events("J1")])
        with monkeypatch.context() as m:
            _refuse_writes(m)
            with pytest.raises(OSError) as refused:
                store.append("J1", "note", "intake", {"text": "on a full disk"})
            assert refused.value.errno == errno.ENOSPC
            assert (store.vector(), store.outbox_ids(), [e.id for e in store.job_events("J1")]) == before
            with pytest.raises(OSError):
                store.ingest([event("laser-1", 1, "J1", "note", 5)])
            assert store.vector() == before[0]  # the remote event comes back by anti-entropy
        after = store.append("J1", "note", "intake", {"text": "space is back"})
        assert after.id == f"{first.origin}:2"  # the refused event never existed
    with Store.open(tmp_path, "intake-1") as store:
        assert [e.id for e in store.job_events("J1")] == [first.id, after.id]
        assert store.job("J1").notes == ["intake-1: space is back"]


def test_a_clock_behind_its_peers_runs_on_from_what_it_has_seen(tmp_path):
    """A Pi booted an hour behind (no RTC) whose peers are ahead: its time is the HLC reading it
    was dragged to, and it keeps running from there as seconds pass, instead of standing still
    until the wall clock catches up (stations time debounces and timeouts with it)."""
    import time as _time

    from edge.clock import Timestamp

    wall = [NOW * 1000 - 3_600_000]
    store = Store.open(tmp_path / "d", "laser-1", wall=lambda: wall[0])
    try:
        assert store.best_time_s() == wall[0] / 1000
        store.clock.observe(Timestamp(NOW * 1000, 0, "pickup-1"), wall[0])  # clamped to wall + 60 s
        first = store.best_time_s()
        assert first == store.clock.last.wall_ms / 1000 > wall[0] / 1000
        _time.sleep(0.3)
        later = store.best_time_s()
        assert 0.25 <= later - first < 5  # ran on with the seconds, the wall clock unchanged
        store.clock.observe(Timestamp(NOW * 1000, 0, "pickup-1"), wall[0])  # the same reading again
        assert store.best_time_s() >= later  # never back
        wall[0] = NOW * 1000 + 10_000  # NTP: the wall clock is right again, past every reading
        assert store.best_time_s() == wall[0] / 1000
    finally:
        store.close()
