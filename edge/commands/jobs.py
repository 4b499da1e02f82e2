"""`edge jobs ...`: read a node's job ledger (open jobs, one job's state, its events)."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from pathlib import Path
from typing import Any

from edge.cli import arg, command, group
from edge.config import ConfigError, load_station
from edge.ledger import Event, JobState
from edge.store import Store

group("jobs", "read a node's job ledger: open jobs, one job's state and its events")

WHERE = (
    arg("--data-dir", metavar="DIR", help="the node's data dir (node.data_dir of its station file)"),
    arg("--config", metavar="STATION_FILE", help="a station file; its node.data_dir is read"),
    arg("--json", action="store_true", help="print JSON for machines instead of text"),
)
WHERE_HELP = ("Reads the store read-only, so it is safe while 'edge run' is running.\n"
              "Give the node's data dir with --data-dir DIR or its station file with --config.\n")


@command(
    "jobs list", "list open jobs (and archived ones with --all)",
    *WHERE,
    arg("--all", action="store_true", help="include archived (completed or cancelled) jobs"),
    description="List the jobs this node knows: status, product, next step, conflicts.\n" + WHERE_HELP
                + "\nexample:\n  edge jobs list --config /etc/fabrique-edge/station.toml",
)
def jobs_list(args: argparse.Namespace) -> int:
    store = _open(args)
    if store is None:
        return 2
    with store:
        rows = [s.to_json() for s in store.open_jobs(include_closed=True)]
        if args.all:
            hot = {r["job"] for r in rows}
            rows = [r for r in store.archived_jobs() if r.get("job") not in hot] + rows
    if args.json:
        print(json.dumps(rows, ensure_ascii=False))
        return 0
    if not rows:
        print("no jobs")
        return 0
    print(f"{'JOB':<24} {'STATUS':<12} {'PRODUCT':<12} {'NEXT':<11} CONFLICTS")
    for r in rows:
        print(f"{r['job']:<24} {r.get('status', '?'):<12} {r.get('product', ''):<12} "
              f"{r.get('next_step') or '-':<11} {len(r.get('conflicts', []))}")
    return 0


@command(
    "jobs show", "show one job's state: steps, who did them, conflicts, notes",
    arg("job", metavar="JOB", help="the job id (the order id)"),
    *WHERE,
    description="Show the folded state of one job, open or archived.\n" + WHERE_HELP
                + "\nexample:\n  edge jobs show A7K2-0042 --data-dir /var/lib/fabrique-edge",
)
def jobs_show(args: argparse.Namespace) -> int:
    store = _open(args)
    if store is None:
        return 2
    with store:
        state = store.job(args.job)
    if state is None:
        print(f"job {args.job!r} is not known to this node", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(state.to_json(), ensure_ascii=False))
    else:
        _print_state(state)
    return 0


@command(
    "jobs events", "list one job's events in ledger order (hlc, id)",
    arg("job", metavar="JOB", help="the job id (the order id)"),
    *WHERE,
    description="List the events of one job as every node folds them: sorted by (hlc, id).\n"
                + WHERE_HELP + "\nexample:\n  edge jobs events A7K2-0042 --config station.toml --json",
)
def jobs_events(args: argparse.Namespace) -> int:
    store = _open(args)
    if store is None:
        return 2
    with store:
        events = store.job_events(args.job)
    if not events:
        print(f"job {args.job!r} is not known to this node", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([e.to_json() for e in events], ensure_ascii=False))
        return 0
    for ev in events:
        print(_event_line(ev))
    return 0


def _open(args: argparse.Namespace) -> Store | None:
    data_dir: Path | None = Path(args.data_dir) if args.data_dir else None
    if data_dir is None and args.config:
        try:
            data_dir = load_station(args.config).node.data_dir
        except ConfigError as exc:
            for issue in exc.issues:
                print(issue, file=sys.stderr)
            return None
    if data_dir is None:
        print("which node? give --data-dir DIR or --config STATION_FILE", file=sys.stderr)
        return None
    if not data_dir.is_dir():
        print(f"{data_dir}: no such data dir", file=sys.stderr)
        return None
    try:
        return Store.open(data_dir, readonly=True)
    except (ValueError, OSError) as exc:
        print(f"{data_dir}: {exc}", file=sys.stderr)
        return None


def _when(wall_ms: int) -> str:
    return dt.datetime.fromtimestamp(wall_ms / 1000, dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] + "Z"


def _event_line(ev: Event) -> str:
    data = json.dumps(dict(ev.data), ensure_ascii=False) if ev.data else ""
    return f"{_when(ev.hlc.wall_ms)} +{ev.hlc.counter:<3} {ev.id:<18} {ev.type:<13} {ev.station:<10} {data}"


def _print_state(state: JobState) -> None:
    js: dict[str, Any] = state.to_json()
    print(f"job {state.job}: {state.status}" + (f" (product {state.product})" if state.product else ""))
    opts = state.order.get("options") if state.order else None
    if opts:
        print("  options: " + ", ".join(f"{k}={v!r}" for k, v in opts.items()))
    for s in state.steps:
        where = f" by {s.node}" if s.node else ""
        extra = f" ({s.reason})" if s.reason else ""
        off = "" if s.on_route else " [not on this product's route]"
        print(f"  {s.step:<11} {s.status:<8}{where}{extra}{off}")
    print(f"  next step: {js['next_step'] or '-'}   events: {state.events}")
    for c in state.conflicts:
        print(f"  conflict {c.kind}: {c.winner} wins over {c.loser}" + (f" — {c.detail}" if c.detail else ""))
    for note in state.notes:
        print(f"  note {note}")
