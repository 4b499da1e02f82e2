"""Power cuts: a writer killed with SIGKILL at random moments, 200 times, loses nothing it acknowledged."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from ledger_kit import REPO

from edge.ledger import Event
from edge.storage import parse_line
from edge.store import Store

CHILD = Path(__file__).with_name("crash_child.py")
ROUNDS = 200


def _spawn(data_dir: Path, round_no: int) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.Popen([sys.executable, str(CHILD), str(data_dir), str(round_no)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def _kill_at_random(child: subprocess.Popen[str], rnd: random.Random) -> list[str]:
    """Let the child acknowledge a random number of events, then SIGKILL it mid-whatever."""
    acked: list[str] = []
    if rnd.random() < 0.1:
        time.sleep(rnd.uniform(0, 0.2))  # sometimes during boot and recovery
    else:
        for _ in range(rnd.randint(1, 14)):
            line = child.stdout.readline()
            if not line:
                break
            acked.append(line.strip())
        time.sleep(rnd.uniform(0, 0.003))  # land anywhere inside the next write
    child.send_signal(signal.SIGKILL)
    rest, errors = child.communicate()
    assert child.returncode == -signal.SIGKILL, errors
    acked += [x for x in rest.split("\n") if x]  # complete lines were printed after a durable append
    return acked


def _stored_event_ids(data_dir: Path) -> list[str]:
    """Every event id on disk after a reboot, raw: hot set plus archive, duplicates included."""
    with Store.open(data_dir, "crash-1") as store:
        hot = [Event.from_json(doc).id for doc in store.hot.read().get("events", {}).values()]
        archived = [Event.from_json(e).id for _job, rec in store.archive.records() for e in rec["events"]]
        # one stream per incarnation (a crash that damaged the hot set starts a new one)
        assert sum(store.vector().values()) == len(set(hot + archived))
        assert not store.extra
        for segment in store.archive.segments:  # no torn line left behind in the archive
            assert all(parse_line(line) for line in segment.read_bytes().splitlines(keepends=True))
        assert {e.id for e in store.events_since({})} == set(hot + archived)
        return hot + archived


def test_power_cut_at_any_moment_loses_no_acknowledged_event(tmp_path):
    rnd = random.Random(20261121)
    data_dir = tmp_path / "data"
    acked: set[str] = set()
    for round_no in range(ROUNDS):
        for event_id in _kill_at_random(_spawn(data_dir, round_no), rnd):
            assert event_id not in acked, f"{event_id} was issued twice"
            acked.add(event_id)
        stored = _stored_event_ids(data_dir)
        twice = [i for i, n in Counter(stored).items() if n > 1]
        assert not twice, f"round {round_no}: stored twice: {twice[:5]}"
        missing = acked - set(stored)
        assert not missing, f"round {round_no}: acknowledged but lost: {sorted(missing)[:5]}"
        streams: dict[str, list[int]] = {}
        for i in stored:
            origin, _, seq = i.rpartition(":")
            streams.setdefault(origin, []).append(int(seq))
        for origin, seqs in streams.items():
            assert sorted(seqs) == list(range(1, len(seqs) + 1)), f"round {round_no}: {origin}: torn or missing seqs"
    assert len(acked) > ROUNDS
