"""Write latency of the node's store vs stock TinyDB, with 100 to 50,000 past jobs. Prints JSON.

    .venv/bin/python bench/store.py            # the whole table (about a minute)
    .venv/bin/python bench/store.py --quick    # fewer writes, for a smoke run

Our store's four sizes run in one process, their writes interleaved so that machine noise
(other processes, fsync hiccups) falls on every size alike; each stock TinyDB size runs in a
fresh process so its large heap does not tax anything else. "Past jobs" are closed jobs of 6 events each. Our store keeps them in its archive with 20
open jobs in the hot set; stock TinyDB (JSONStorage) keeps every past job as one document,
and a write inserts one event document, as a plain TinyDB ledger would. A write of ours is
`Store.append` (durable: fsync file + rename + fsync dir); stock TinyDB does not fsync.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge.clock import Timestamp  # noqa: E402
from edge.ledger import Event, fold  # noqa: E402
from edge.store import Store  # noqa: E402

SIZES = (100, 1_000, 10_000, 50_000)
ROUTE = ["intake", "laser", "printer", "transfer", "inspection", "pickup"]
OPEN_JOBS = 20


def _past_job(n: int) -> tuple[str, list[Event]]:
    job = f"P{n:06d}-{'x' * 8}"
    kinds = ["created", "step_done", "step_done", "step_done", "step_done", "completed"]
    events = []
    for i, kind in enumerate(kinds):
        data = ({"product": "stand", "route": ROUTE, "order": {"order_id": job, "options": {"colour": "red",
                 "text": "Bonjour Lyon!"}}} if kind == "created" else {"step": ROUTE[i - 1]} if i < 5 else {})
        events.append(Event(f"hub:{n * 6 + i + 1}", job, kind, "intake", Timestamp(1_700_000_000_000 + n, i, "hub"),
                            data))
    return job, events


def _writes(history: int, count: int) -> list[tuple[str, str, dict]]:
    """A steady stream: every job is launched, walks 4 steps, completes; 20 stay open."""
    ops = []
    n = 0
    while len(ops) < count:
        job = f"N{history}-{n:06d}"
        ops.append((job, "created", {"product": "stand", "route": ROUTE, "order": {"order_id": job}}))
        ops += [(job, "step_done", {"step": k}) for k in ROUTE[:4]]
        ops.append((job, "completed", {}))
        n += 1
    return ops[:count]


def _build_ours(root: Path, history: int) -> Store:
    """A store with `history` archived jobs (bulk-written, one fsync) and a warm hot set."""
    store = Store.open(root / str(history), "bench-1")
    chunk = []
    for n in range(history):
        job, events = _past_job(n)
        chunk.append((job, {"state": fold(job, events).to_json(), "events": [e.to_json() for e in events]}))
        if len(chunk) == 1000:
            store.archive.append(chunk, sync=False)
            chunk = []
    store.archive.append(chunk)
    for job, kind, data in _writes(-1, OPEN_JOBS * 6):  # fill the hot set, build the archive index
        store.append(job, kind, "intake", data)
    return store


def bench_ours(sizes: tuple[int, ...], count: int) -> dict[int, list[float]]:
    """Writes to every size interleaved, one after the other, so machine noise hits all alike.

    The outbox is acknowledged and closed jobs archived every 6 writes (untimed), as a node
    with its broker online does; the hot set holds about 20 open jobs throughout.
    """
    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        stores = {size: _build_ours(Path(tmp), size) for size in sizes}
        ops = _writes(0, count)
        gc.collect()
        times: dict[int, list[float]] = {size: [] for size in sizes}
        for i, (job, kind, data) in enumerate(ops):
            for size, store in stores.items():
                t = time.perf_counter()
                store.append(job, kind, "intake", data)
                times[size].append(time.perf_counter() - t)
                if i % 6 == 5:
                    store.archive_closed()
                    store.outbox_ack(e.id for e in store.outbox_peek(1000))
        for store in stores.values():
            store.close()
        return times


def bench_stock(history: int, count: int) -> list[float]:
    from tinydb import TinyDB

    with tempfile.TemporaryDirectory(dir=os.environ.get("BENCH_DIR")) as tmp:
        path = Path(tmp) / "stock.json"
        jobs = {}
        for n in range(history):
            job, events = _past_job(n)
            jobs[str(n + 1)] = {"job": job, "state": fold(job, events).to_json(),
                                "events": [e.to_json() for e in events]}
        path.write_text(json.dumps({"jobs": jobs, "events": {}}))
        del jobs
        gc.collect()
        db = TinyDB(path)
        events = db.table("events")
        times = []
        for seq, (job, kind, data) in enumerate(_writes(history, count), start=1):
            doc = Event(f"bench-1:{seq}", job, kind, "intake", Timestamp(1_800_000_000_000, seq, "bench-1"),
                        data).to_json()
            t = time.perf_counter()
            events.insert(doc)
            times.append(time.perf_counter() - t)
        db.close()
        return times


def _summary(times: list[float]) -> dict[str, float]:
    ms = sorted(t * 1000 for t in times)
    return {"writes": len(ms), "p50_ms": round(statistics.median(ms), 3),
            "p99_ms": round(ms[min(len(ms) - 1, int(len(ms) * 0.99))], 3), "max_ms": round(ms[-1], 3)}


def _one(kind: str, history: int, count: int) -> dict[str, float]:
    """Run one measurement in a fresh interpreter."""
    out = subprocess.run([sys.executable, __file__, "--one", kind, str(history), str(count)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer writes (smoke run)")
    parser.add_argument("--one", nargs=3, metavar=("KIND", "HISTORY", "COUNT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        kind, history, count = args.one[0], int(args.one[1]), int(args.one[2])
        if kind == "ours":
            print(json.dumps({str(k): _summary(v) for k, v in bench_ours(SIZES, count).items()}))
        else:
            print(json.dumps(_summary(bench_stock(history, count))))
        return
    ours_count = 200 if args.quick else 1000
    stock_counts = {100: 300, 1_000: 100, 10_000: 20, 50_000: 3} if not args.quick else \
        {100: 50, 1_000: 20, 10_000: 5, 50_000: 2}
    started = time.time()
    result: dict[str, object] = {
        "bench": "store write latency (one ledger event appended, durable for ours)",
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "past_job": "6 events, ~1.2 kB of JSON",
        "ours": {}, "stock_tinydb": {},
    }
    result["ours"] = _one("ours", 0, ours_count)
    for size in SIZES:
        result["stock_tinydb"][str(size)] = _one("stock", size, stock_counts[size])  # type: ignore[index]
    ours, stock = result["ours"], result["stock_tinydb"]
    result["stock_sampled"] = (f"stock TinyDB is sampled with fewer writes at large sizes "
                               f"({', '.join(f'{k}: {v}' for k, v in stock_counts.items())})")
    result["checks"] = {
        "p99_50000_over_p99_100": round(ours["50000"]["p99_ms"] / ours["100"]["p99_ms"], 2),  # type: ignore[index]
        "target_p99_ratio_at_most": 1.5,
        "stock_p50_over_ours_p50_at_10000": round(stock["10000"]["p50_ms"] / ours["10000"]["p50_ms"], 1),  # type: ignore[index]
        "stock_p99_over_ours_p99_at_10000": round(stock["10000"]["p99_ms"] / ours["10000"]["p99_ms"], 1),  # type: ignore[index]
        "target_speedup_at_least": 20,
    }
    result["seconds"] = round(time.time() - started, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
