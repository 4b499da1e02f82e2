"""`edge jobs ...` run as a real process over a node's data dir."""

from __future__ import annotations

import json
import re

from ledger_kit import ROUTE

from edge.store import Store


def _laser_node(tmp_path):
    data = tmp_path / "data"
    with Store.open(data, "laser-1") as store:
        store.append("A7K2-0042", "created", "laser", {"product": "stand", "route": list(ROUTE),
                                                      "order": {"options": {"colour": "red"}}})
        store.append("A7K2-0042", "step_started", "laser", {"step": "laser"})
        store.ingest([{"id": "laser-2:1", "job": "A7K2-0042", "type": "step_started", "station": "laser",
                       "hlc": [store.clock.last.wall_ms + 1, 0, "laser-2"], "data": {"step": "laser"}}])
        store.append("B1", "created", "laser", {"product": "stand", "route": ["laser"]})
        store.append("B1", "cancelled", "laser")
        store.archive_closed()
    return data


def test_jobs_list_shows_open_jobs_and_archived_ones_on_request(tmp_path, run_edge):
    data = _laser_node(tmp_path)
    done = run_edge("jobs", "list", "--data-dir", str(data))
    assert done.returncode == 0, done.stderr
    assert "A7K2-0042" in done.stdout and "B1" not in done.stdout
    rows = json.loads(run_edge("jobs", "list", "--data-dir", str(data), "--all", "--json").stdout)
    assert {r["job"]: r["status"] for r in rows} == {"A7K2-0042": "in_progress", "B1": "cancelled"}


def test_jobs_show_reports_two_lasers_fighting_over_one_step(tmp_path, run_edge):
    done = run_edge("jobs", "show", "A7K2-0042", "--data-dir", str(_laser_node(tmp_path)))
    assert done.returncode == 0, done.stderr
    assert "laser       running  by laser-1" in done.stdout
    assert re.search(r"conflict step_contention: laser-1\.[0-9a-f]{8}:2 wins over laser-2:1", done.stdout)


def test_jobs_events_lists_the_ledger_in_order(tmp_path, run_edge):
    done = run_edge("jobs", "events", "A7K2-0042", "--data-dir", str(_laser_node(tmp_path)), "--json")
    ids = [e["id"] for e in json.loads(done.stdout)]
    assert [re.sub(r"\.[0-9a-f]{8}:", ":", i) for i in ids] == ["laser-1:1", "laser-1:2", "laser-2:1"]


def test_unknown_job_and_missing_data_dir_are_told_apart(tmp_path, run_edge):
    data = _laser_node(tmp_path)
    assert run_edge("jobs", "show", "NOPE", "--data-dir", str(data)).returncode == 1
    missing = run_edge("jobs", "list", "--data-dir", str(tmp_path / "nowhere"))
    assert missing.returncode == 2
    assert "no such data dir" in missing.stderr


def test_jobs_list_finds_the_data_dir_through_the_station_file(tmp_path, line_file, run_edge):
    _laser_node(tmp_path)
    station = tmp_path / "laser.toml"
    station.write_text('[node]\nid = "laser-1"\nline = "demo"\ndata_dir = "data"\n'
                       '[station]\nkind = "laser"\n[mqtt]\nenabled = false\n')
    done = run_edge("jobs", "list", "--config", str(station))
    assert done.returncode == 0, done.stderr
    assert "A7K2-0042" in done.stdout
