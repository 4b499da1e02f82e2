"""What the live views and the dashboards read beside the ledger. Pure: job states and readings
in, JSON payloads out; edge/node_mqtt.py publishes them (schemas and docs: edge/topics.py).

    public/node/<node>                 a station as the public sees it: state, mode, the public id
                                       of the job it makes, progress, safety circuits
    public/job/<public id>             a job under its public id: product, colour, route and times,
                                       the name as `[public] name` allows; text and options sealed
    public/job/<public id>/snapshot    the inspection's picture, a thumbnail, sealed
    node/<node>/state  `metrics`       jobs per hour, step durations, queue length (dashboards)

The public subtree names no visitor and no order: no order id, no order payload, no reasons (an
operator's reason may quote a job id). A job whose order carries no `secret` (launched before
the live view existed) has no public face at all.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge.config import LineConfig, Product
from edge.ledger import Event, JobState
from edge.public import public_id, public_name, seal

PUBLIC_VERSION = 1
HOUR_MS = 3_600_000
DURATIONS_KEPT = 20  # step_mean_s: the mean of this many last steps
THUMB_WIDTH = 480
THUMB_MAX_BYTES = 120_000  # sealed and base64'd twice it stays under the topic's 256 KiB


def secret_of(state: JobState) -> str:
    """The job secret the intake kept in the order (edge.orders.Order.secret), or ""."""
    secret = state.order.get("secret") if isinstance(state.order, Mapping) else None
    return secret if isinstance(secret, str) else ""


def public_id_of(state: JobState) -> str | None:
    """The id the job is shown under in public; None for a job with no secret."""
    secret = secret_of(state)
    return public_id(secret) if secret else None


def order_options(state: JobState) -> dict[str, Any]:
    options = state.order.get("options") if isinstance(state.order, Mapping) else None
    return dict(options) if isinstance(options, Mapping) else {}


def text_option(product: Product | None) -> str:
    """The option holding the engraved text: the engraving's `text_option`, else "text"."""
    return product.engraving.text_option if product is not None and product.engraving is not None else "text"


def colour_of(product: Product | None, options: Mapping[str, Any]) -> str | None:
    """The ordered colour (or its option's default); None when the product has no colour option."""
    name = product.inspection.colour_option if product is not None and product.inspection is not None else "colour"
    spec = product.options.get(name) if product is not None else None
    if product is not None and spec is None:
        return None
    wanted = options.get(name, spec.default if spec is not None else None)
    return wanted if isinstance(wanted, str) else None


def public_job(state: JobState, created_ms: int, line: LineConfig | None) -> tuple[str, dict[str, Any]] | None:
    """(public id, payload of `public/job/<public id>`), or None for a job with no public face."""
    secret = secret_of(state)
    if not secret or not state.created_by:
        return None
    product = line.products.get(state.product) if line is not None else None
    policy = line.public.name if line is not None else "initial"
    options = order_options(state)
    text = options.get(text_option(product), "")
    text = text if isinstance(text, str) else str(text)
    route = [s for s in state.steps if s.on_route]
    running = next((s.step for s in route if s.status == "running"), None)
    pid = public_id(secret)
    return pid, {
        "v": PUBLIC_VERSION, "id": pid, "product": state.product,
        "product_title": product.title if product is not None else state.product,
        "name": public_name(text, policy), "colour": colour_of(product, options), "status": state.status,
        "station": running or state.next_step,
        "steps": [{"step": s.step, "status": s.status, "started_ms": s.started_ms or None,
                   "ended_ms": s.ended_ms or None, "progress": s.progress} for s in route],
        "created_ms": created_ms, "updated_ms": state.last_hlc.wall_ms if state.last_hlc else created_ms,
        "sealed": seal(secret, {"text": text, "options": options}),
    }


def public_node(node: str, kind: str, title: str, state: str, mode: str, job: str | None,
                progress: int | None, since_ms: int, safety: Mapping[str, str], now_ms: int) -> dict[str, Any]:
    """The payload of `public/node/<node>` (`job`: a public id)."""
    return {"v": PUBLIC_VERSION, "node": node, "kind": kind, "title": title, "state": state, "mode": mode,
            "job": job, "progress": progress, "since_ms": since_ms, "safety": dict(safety), "updated_ms": now_ms}


@dataclass(frozen=True)
class Snapshot:
    """A picture a node took of a job and named in its ledger (`data.snapshot`, under its files)."""

    path: str
    verdict: str
    taken_ms: int


def latest_snapshot(events: Iterable[Event], node: str) -> Snapshot | None:
    """The last snapshot `node` recorded for a job (events in ledger order): the inspection's
    `step_done`/`step_failed` (`verdict` pass or reject) or a retake's `step_progress`."""
    found = None
    for ev in events:
        path = ev.data.get("snapshot")
        if ev.node != node or not isinstance(path, str) or not path:
            continue
        verdict = ev.data.get("verdict")
        if not isinstance(verdict, str):
            verdict = "retake" if "retake" in ev.data else ""
        found = Snapshot(path, verdict, ev.hlc.wall_ms)
    return found


def thumbnail(jpeg: bytes, width: int = THUMB_WIDTH, max_bytes: int = THUMB_MAX_BYTES) -> bytes:
    """A JPEG at most `width` px wide (and `max_bytes` long) of a JPEG; ValueError if unreadable."""
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError("not a readable JPEG")
    height, wide = image.shape[:2]
    if wide > width:
        image = cv2.resize(image, (width, max(1, round(height * width / wide))), interpolation=cv2.INTER_AREA)
    for quality in (80, 65, 50, 35):
        ok, out = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        if ok and len(out) <= max_bytes:
            return out.tobytes()
    raise ValueError(f"a {image.shape[1]} px thumbnail does not fit in {max_bytes} bytes")


def public_snapshot(secret: str, jpeg: bytes, verdict: str, taken_ms: int) -> dict[str, Any]:
    """The payload of `public/job/<public id>/snapshot` (`jpeg`: the thumbnail)."""
    return {"v": PUBLIC_VERSION, "sealed": seal(secret, {"jpeg": base64.b64encode(jpeg).decode("ascii"),
                                                          "verdict": verdict, "taken_ms": taken_ms})}


# ---------------------------------------------------------------- a station's numbers

def queue_length(jobs: Iterable[JobState], kind: str) -> int:
    """Open jobs waiting for a station of `kind`: their next step is it, still pending, and no
    station works on them (the part is there or on its way)."""
    count = 0
    for state in jobs:
        step = state.step(kind)
        if (state.is_open and state.next_step == kind and step is not None and step.status == "pending"
                and not any(s.status == "running" for s in state.steps)):
            count += 1
    return count


@dataclass
class StationMetrics:
    """Jobs per hour and step durations of one node's station, from the job states it sees
    (each job's step counted once, its latest finish), and its queue."""

    node: str
    kind: str
    done: dict[str, tuple[int, int]] = field(default_factory=dict)  # job -> (ended_ms, duration_ms)

    def observe(self, job: str, steps: Iterable[Mapping[str, Any]]) -> None:
        """Note a job's step of this kind if this node finished it (`steps` as in `JobState.to_json`)."""
        for s in steps:
            if s.get("step") != self.kind or s.get("status") != "done" or s.get("node") != self.node:
                continue
            started, ended = s.get("started_ms"), s.get("ended_ms")
            if isinstance(started, int) and isinstance(ended, int) and started and ended:
                self.done[job] = (ended, max(0, ended - started))

    def observe_state(self, state: JobState) -> None:
        self.observe(state.job, ({"step": s.step, "status": s.status, "node": s.node, "started_ms": s.started_ms,
                                  "ended_ms": s.ended_ms} for s in state.steps))

    def reading(self, now_ms: int, jobs: Iterable[JobState]) -> dict[str, Any]:
        """The `metrics` of the state topic; forgets what no longer counts."""
        latest = sorted(self.done.items(), key=lambda item: item[1][0])
        self.done = dict(item for n, item in enumerate(latest)
                         if now_ms - item[1][0] <= HOUR_MS or n >= len(latest) - DURATIONS_KEPT)
        recent = [duration for _job, (_end, duration) in latest[-DURATIONS_KEPT:]]
        return {"jobs_per_hour": sum(1 for end, _d in self.done.values() if now_ms - end <= HOUR_MS),
                "step_last_s": round(recent[-1] / 1000, 1) if recent else None,
                "step_mean_s": round(sum(recent) / len(recent) / 1000, 1) if recent else None,
                "queue": queue_length(jobs, self.kind)}
