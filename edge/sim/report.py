"""What a run of the simulated line made, checked from the nodes' own ledgers (not from the
demo's bookkeeping): pure, events in, a JSON-able report out.

    jobs_total, jobs_completed, jobs_failed (with the failing step and its reason; a job an
                      operator cancelled is failed too, the reason theirs), jobs_open
    lost_events       events some node issued that no node holds (a gap in an origin's seqs;
                      an origin's last events lost everywhere leave no gap, but the origin
                      itself holds what it issued unless its store was lost too)
    missing           per node, events of the line it does not hold (it has not converged)
    duplicated_steps  (job, step) done more than once, or listed as started twice (a
                      step_repeated or step_contention conflict)
    nodes_converged   every node holds the same events
    latency_ms        scan_to_start: a job's `created` (the intake's accepted scan) to its first
                      station step's start;
                      handoff: a step done to the next route step started (p50, p99, by the HLC)

`checks(report)` names what is wrong; an empty list is a good run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from edge.ledger import Event, fold, merge

DUPLICATE_CONFLICTS = ("step_repeated", "step_contention")


def percentile(values: list[float], p: float, digits: int = 1) -> float | None:
    """The `p`th percentile of `values` (nearest rank), rounded; None when there are none. The
    benchmarks' too (bench/report.py)."""
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))], digits)


def line_report(ledgers: Mapping[str, Iterable[Event]]) -> dict[str, Any]:
    """The report of a run from every node's ledger (node name -> the events it holds)."""
    held = {name: {e.id: e for e in events} for name, events in ledgers.items()}
    union = merge(*(h.values() for h in held.values()))
    by_origin: dict[str, set[int]] = {}
    for ev in union.values():
        by_origin.setdefault(ev.origin, set()).add(ev.seq)
    lost = sum(max(seqs) - len(seqs) for seqs in by_origin.values())
    missing = {name: len(union) - len(h) for name, h in held.items() if len(h) != len(union)}
    jobs: dict[str, list[Event]] = {}
    for ev in union.values():
        jobs.setdefault(ev.job, []).append(ev)
    completed, failed, still_open, duplicated = [], [], [], []
    launch, handoff = [], []
    for job, events in sorted(jobs.items()):
        state = fold(job, events)
        if state.status == "unknown":
            continue
        if state.status == "completed":
            completed.append(job)
        elif state.status == "failed":
            step = next((s for s in state.steps if s.on_route and s.status == "failed"), None)
            failed.append({"job": job, "step": step.step if step else "", "reason": step.reason if step else ""})
        elif state.status == "cancelled":
            closing = next((e for e in events if e.type == "cancelled"), None)
            failed.append({"job": job, "step": closing.step if closing else "", "reason":
                           "cancelled: " + str(closing.data.get("reason") or "no reason given") if closing else ""})
        else:
            still_open.append(job)
        dones: dict[str, int] = {}
        for ev in events:
            if ev.type == "step_done":
                dones[ev.step] = dones.get(ev.step, 0) + 1
        twice = {s for s, n in dones.items() if n > 1 and not _redone(state, s, n)}
        twice |= {c.step for c in state.conflicts if c.kind in DUPLICATE_CONFLICTS}
        duplicated += [{"job": job, "step": s} for s in sorted(twice)]
        launch_ms, hand = _latencies(state.steps, events)
        launch += launch_ms
        handoff += hand
    return {
        "jobs_total": len(completed) + len(failed) + len(still_open),
        "jobs_completed": len(completed),
        "jobs_failed": len(failed),
        "jobs_open": len(still_open),
        "failed": failed,
        "events": len(union),
        "lost_events": lost,
        "missing": missing,
        "duplicated_steps": len(duplicated),
        "duplicates": duplicated,
        "nodes_converged": not missing,
        "latency_ms": {"scan_to_start_p50": percentile(launch, 50), "scan_to_start_p99": percentile(launch, 99),
                       "handoff_p50": percentile(handoff, 50), "handoff_p99": percentile(handoff, 99)},
    }


def _redone(state: Any, step: str, dones: int) -> bool:
    """A step done again after an inspection sent the part back (or an operator's retry): as
    many starts as dones, each a new attempt."""
    found = state.step(step)
    return found is not None and found.attempts >= dones


def _latencies(steps: list[Any], events: list[Event]) -> tuple[list[float], list[float]]:
    route = [s.step for s in steps if s.on_route]
    first_start: dict[str, int] = {}
    last_done: dict[str, int] = {}
    created = None
    for ev in sorted(events, key=lambda e: e.key):
        if ev.type == "created" and created is None:
            created = ev.hlc.wall_ms
        elif ev.type == "step_started":
            first_start.setdefault(ev.step, ev.hlc.wall_ms)
        elif ev.type == "step_done":
            last_done.setdefault(ev.step, ev.hlc.wall_ms)
    launch = []
    stations = [s for s in route[1:] if s in first_start]  # the intake's own step is the launch
    if created is not None and stations:
        launch.append(float(first_start[stations[0]] - created))
    hand = [float(first_start[b] - last_done[a]) for a, b in zip(route, route[1:], strict=False)
            if a in last_done and b in first_start and first_start[b] >= last_done[a]]
    return launch, hand


def checks(report: Mapping[str, Any], expected_jobs: int | None = None) -> list[str]:
    """What is wrong with a run: each a sentence; none for a good run."""
    out = []
    if report["lost_events"]:
        out.append(f"{report['lost_events']} event(s) issued that no node holds")
    if not report["nodes_converged"]:
        out.append("the nodes' ledgers differ: " + ", ".join(f"{n} lacks {k}" for n, k in report["missing"].items()))
    if report["duplicated_steps"]:
        out.append("steps done twice: " + ", ".join(f"{d['job']}/{d['step']}" for d in report["duplicates"]))
    if report["jobs_open"]:
        out.append(f"{report['jobs_open']} job(s) neither completed nor failed")
    if any(not f["reason"] for f in report["failed"]):
        out.append("a failed job without a reason")
    if expected_jobs is not None and report["jobs_total"] != expected_jobs:
        out.append(f"{report['jobs_total']} job(s) in the ledgers, {expected_jobs} launched")
    return out
