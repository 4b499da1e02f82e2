"""What the live views show, folded from the line's public subtree. Pure: messages and `now` in,
views (JSON-ready dicts) out; no sockets, threads or clock.

    public/node/<node>               a station's node: state, mode, job, progress, safety
    public/job/<public id>           a job: its public fields (`sealed` kept for the QR's holder)
    public/job/<public id>/snapshot  its sealed inspection picture
    the broker link                  up, or down since when

**Staleness.** A node republishes every 15 s; one not heard for 45 s is shown offline. "Heard"
is when this server received it live or, for a retained copy delivered on subscribing, its
`updated_ms` against this server's clock (never later than now): a Pi's clock may be off, ours
judges.

**Reconnecting.** The broker replays every retained topic on subscribing, but not what was
cleared meanwhile (an archived job): on each connection the model forgets the line and rebuilds
it from the replay. The link counts as up once the replay settled (SETTLE_MS after the
subscription), so no page shows a half-rebuilt line; until then it is `connecting` (never up
yet) or `down` since the link was lost.

**Privacy.** A view is built from a whitelist of checked fields, never by passing a payload on.
The name is reduced again with the line's policy (a node's mistake cannot show a full name), and
`sealed` leaves the model only through `sealed_job` / `sealed_snapshot`, for the QR's holder.

**In the cloud** (`cloud=True`, `edge web --cloud`), the hub's bridge tells whether the trailer
is reachable: `public/uplink` retained "1" when it connects, "0" as its will. While it is "0" the
link is `down` with `trailer: "down"`: the cloud's pages say the trailer is offline instead of
showing its last state. On the hub the same topic says whether the *cloud* is reachable, which
the local views do not care about: there `cloud` is off and the topic is ignored.

`version` grows with every change a view can show: the server caches views per version (views
do not carry it, so a stream sends a view only when what it shows changed).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edge.config import LineConfig
from edge.public import public_name
from edge.topics import PUBLIC_ID_RE, PUBLIC_JOB, PUBLIC_NODE, PUBLIC_SNAPSHOT, Topics

STALE_AFTER_MS = 45_000  # three missed 15 s heartbeats
SETTLE_MS = 300  # after the subscription, the broker's replay of retained topics is done
FINISHED_SHOWN = 6  # finished jobs the line view lists, newest first
MAX_JOBS = 5000  # a bound on memory; the oldest job goes first
NODE_STATES = ("idle", "busy", "fault", "manual", "estop", "offline")
JOB_STATUSES = ("unknown", "waiting", "in_progress", "failed", "done", "completed", "cancelled")
ACTIVE = ("unknown", "waiting", "in_progress", "done")  # a stand on the line or in its locker
STEP_STATUSES = ("pending", "running", "done", "failed", "skipped")
_SEVERITY = ("estop", "fault", "busy", "manual", "idle", "offline")  # a station card's colour, worst first


@dataclass
class Link:
    """The broker link as the pages see it: `connecting` (never up yet), `up` or `down` since."""

    state: str = "connecting"
    since_ms: int = 0
    problem: str = ""
    settles_ms: int | None = None  # connected, subscribed: up once the replay settled

    def view(self) -> dict[str, Any]:
        return {"up": self.state == "up", "state": self.state, "since_ms": self.since_ms, "problem": self.problem,
                "trailer": None}


@dataclass
class _Node:
    body: dict[str, Any]
    heard_ms: int


@dataclass
class _Job:
    body: dict[str, Any]
    sealed: str
    snapshot: str | None = None


def station_kinds(line: LineConfig) -> list[str]:
    """Every station kind of the line, in route order (routes merged), then those only the
    `[public.stations]` table names."""
    kinds: list[str] = []
    for product in line.products.values():
        before = -1
        for kind in product.route:
            if kind in kinds:
                before = kinds.index(kind)
            else:
                before += 1
                kinds.insert(before, kind)
    return kinds + [k for k in line.public.stations if k not in kinds]


def _text(value: Any, limit: int = 80) -> str:
    return value[:limit] if isinstance(value, str) else ""


def _ms(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def _percent(value: Any) -> int | None:
    return min(100, max(0, value)) if isinstance(value, int) and not isinstance(value, bool) else None


def _kind(value: Any) -> str:
    return value if isinstance(value, str) and 0 < len(value) <= 32 and value.isascii() else ""


def clean_node(body: dict[str, Any], node: str) -> dict[str, Any] | None:
    """The fields of a `public/node` payload a view may show, checked; None if it is not `node`'s."""
    if body.get("node") != node:
        return None
    safety = body.get("safety") if isinstance(body.get("safety"), dict) else {}
    job = body.get("job")
    return {"node": node, "kind": _kind(body.get("kind")), "title": _text(body.get("title")),
            "state": body["state"] if body.get("state") in NODE_STATES else "fault",
            "mode": "manual" if body.get("mode") == "manual" else "auto",
            "job": job if isinstance(job, str) and PUBLIC_ID_RE.fullmatch(job) else None,
            "progress": _percent(body.get("progress")), "since_ms": _ms(body.get("since_ms")),
            "tripped": sorted(_text(d, 32) for d, s in list(safety.items())[:32] if s != "ok"),
            "updated_ms": _ms(body.get("updated_ms")) or 0}


def clean_job(body: dict[str, Any], pid: str, name_policy: str) -> dict[str, Any] | None:
    """The public fields of a `public/job` payload, checked; None if it is not `pid`'s."""
    if body.get("id") != pid:
        return None
    steps = []
    for step in body.get("steps", [])[:32]:
        if isinstance(step, dict) and _kind(step.get("step")):
            steps.append({"step": step["step"],
                          "status": step.get("status") if step.get("status") in STEP_STATUSES else "pending",
                          "started_ms": _ms(step.get("started_ms")), "ended_ms": _ms(step.get("ended_ms")),
                          "progress": _percent(step.get("progress"))})
    colour = body.get("colour")
    return {"id": pid, "product": _kind(body.get("product")), "product_title": _text(body.get("product_title")),
            "name": public_name(_text(body.get("name")), name_policy)[:40],
            "colour": _kind(colour) or None, "status": body["status"] if body.get("status") in JOB_STATUSES
            else "unknown", "station": _kind(body.get("station")) or None, "steps": steps,
            "created_ms": _ms(body.get("created_ms")), "updated_ms": _ms(body.get("updated_ms")) or 0}


@dataclass
class LineModel:
    """The line as the live views show it, from `receive`d public messages and the link's news."""

    line: LineConfig
    line_id: str = ""
    cloud: bool = False  # read the trailer's uplink (public/uplink): a view in the cloud
    stale_after_ms: int = STALE_AFTER_MS
    started_ms: int = 0
    version: int = 0
    link: Link = field(default_factory=Link)
    dropped: int = 0  # malformed messages ignored
    nodes: dict[str, _Node] = field(default_factory=dict)
    jobs: dict[str, _Job] = field(default_factory=dict)
    _stale: frozenset[str] = frozenset()
    _orphans: dict[str, str] = field(default_factory=dict)  # snapshots whose job is not here yet
    uplink: tuple[bool, int] | None = None  # the trailer's bridge: up?, since when (heard here)

    def __post_init__(self) -> None:
        self.line_id = self.line_id or self.line.id
        self.topics = Topics(self.line_id)
        self.link.since_ms = self.started_ms
        self.kinds = station_kinds(self.line)

    @property
    def subscription(self) -> str:
        return f"{self.topics.base}/public/#"

    # ------------------------------------------------------------ the link

    def connected(self, now_ms: int) -> None:
        """A new connection: forget the line, the broker's replay rebuilds it."""
        self.nodes.clear()
        self.jobs.clear()
        self._orphans.clear()
        self.uplink = None
        self._stale = frozenset()
        self.link.settles_ms = None
        self.link.problem = ""
        self.version += 1

    def subscribed(self, now_ms: int) -> None:
        self.link.settles_ms = now_ms + SETTLE_MS

    def disconnected(self, now_ms: int, problem: str = "") -> None:
        """The link is lost, or a connection failed (`problem` says why)."""
        was = self.link.state
        self.link.settles_ms = None
        if was == "up":
            self.link.since_ms = now_ms
        if was != "down" or problem != self.link.problem:
            self.link.state, self.link.problem = "down", problem
            self.version += 1

    def tick(self, now_ms: int) -> bool:
        """Time passes: nodes go stale, a settled replay puts the link up. True if a view changed."""
        changed = False
        if self.link.settles_ms is not None and now_ms >= self.link.settles_ms:
            self.link.state, self.link.since_ms, self.link.settles_ms = "up", now_ms, None
            self.link.problem = ""  # a subscription refused on this connection, then taken
            changed = True
        stale = frozenset(n for n, seen in self.nodes.items() if now_ms - seen.heard_ms > self.stale_after_ms)
        if stale != self._stale:
            self._stale = stale
            changed = True
        if changed:
            self.version += 1
        return changed

    # ------------------------------------------------------------ messages

    def receive(self, topic: str, payload: bytes, retained: bool, now_ms: int) -> bool:
        """One message of the public subtree; True if a view changed. Malformed ones are counted
        in `dropped` and change nothing."""
        if topic == f"{self.topics.base}/public/uplink":
            return self._uplink(payload, now_ms)
        what = self.topics.parse(topic)
        if what is None or not what[0].startswith("public/"):
            self.dropped += 1
            return False
        kind, key = what
        try:
            if kind == "public/node":
                changed = self._node(key, payload, retained, now_ms)
            elif kind == "public/job":
                changed = self._job(key, payload)
            else:
                changed = self._snapshot(key, payload)
        except ValueError:
            self.dropped += 1
            return False
        if changed:
            self.version += 1
        return changed

    def _uplink(self, payload: bytes, now_ms: int) -> bool:
        was = self.uplink
        if payload in (b"0", b"1"):
            up = payload == b"1"
            self.uplink = (up, was[1] if was is not None and was[0] == up else now_ms)
        elif payload == b"":
            self.uplink = None
        else:
            self.dropped += 1
        changed = self.cloud and (was and was[0]) != (self.uplink and self.uplink[0])
        if changed:
            self.version += 1
        return changed

    def link_view(self) -> dict[str, Any]:
        """The broker link as a page sees it; in the cloud, also the trailer's own uplink."""
        view = self.link.view()
        if self.cloud and view["up"] and self.uplink is not None:
            up, since = self.uplink
            view["trailer"] = "up" if up else "down"
            if not up:
                view.update(up=False, state="down", since_ms=since, problem="the trailer is offline: its link to "
                            "the cloud is down (the trailer itself works on)")
        return view

    def _node(self, node: str, payload: bytes, retained: bool, now_ms: int) -> bool:
        if not payload:
            return self.nodes.pop(node, None) is not None
        body = clean_node(PUBLIC_NODE.parse(payload), node)
        if body is None:
            raise ValueError(f"public/node/{node} names another node")
        heard = min(now_ms, body["updated_ms"]) if retained else now_ms
        old = self.nodes.get(node)
        self.nodes[node] = _Node(body, heard)
        was_stale = node in self._stale
        stale = now_ms - heard > self.stale_after_ms
        self._stale = self._stale | {node} if stale else self._stale - {node}
        return old is None or _timeless(old.body) != _timeless(body) or was_stale != stale

    def _job(self, pid: str, payload: bytes) -> bool:
        if not payload:
            self._orphans.pop(pid, None)
            return self.jobs.pop(pid, None) is not None
        raw = PUBLIC_JOB.parse(payload)
        body = clean_job(raw, pid, self.line.public.name)
        if body is None:
            raise ValueError(f"public/job/{pid} is another job's")
        old = self.jobs.get(pid)
        if old is not None and body["updated_ms"] < old.body["updated_ms"]:
            return False  # an older state (a broker back from a power cut): the line never goes back
        snapshot = old.snapshot if old is not None else self._orphans.pop(pid, None)
        self.jobs[pid] = _Job(body, raw["sealed"], snapshot)
        if len(self.jobs) > MAX_JOBS:
            del self.jobs[min(self.jobs, key=lambda j: self.jobs[j].body["updated_ms"])]
        return old is None or old.body != body or old.sealed != raw["sealed"]

    def _snapshot(self, pid: str, payload: bytes) -> bool:
        sealed = PUBLIC_SNAPSHOT.parse(payload)["sealed"] if payload else None
        job = self.jobs.get(pid)
        if job is None:
            if sealed is None:
                self._orphans.pop(pid, None)
            elif len(self._orphans) < 100:
                self._orphans[pid] = sealed
            return False
        changed = job.snapshot != sealed
        job.snapshot = sealed
        return changed

    # ------------------------------------------------------------ views

    def sealed_job(self, pid: str) -> str | None:
        job = self.jobs.get(pid)
        return job.sealed if job is not None else None

    def sealed_snapshot(self, pid: str) -> str | None:
        job = self.jobs.get(pid)
        return job.snapshot if job is not None else None

    def _head(self, view: str) -> dict[str, Any]:
        return {"v": 1, "view": view, "link": self.link_view(),
                "line": {"id": self.line_id, "title": self.line.title}}

    def line_view(self) -> dict[str, Any]:
        """`/`: a card per station kind in route order (its nodes, its story and trades), the jobs
        on the line, the last finished ones."""
        jobs = sorted(self.jobs.values(), key=lambda j: (j.body["created_ms"] or 0, j.body["id"]))
        finished = sorted((j for j in jobs if j.body["status"] not in ACTIVE),
                          key=lambda j: -j.body["updated_ms"])[:FINISHED_SHOWN]
        return {**self._head("line"), "stations": [self._station(k, story=True) for k in self._kinds()],
                "jobs": [self._summary(j) for j in jobs if j.body["status"] in ACTIVE],
                "finished": [self._summary(j) for j in finished]}

    def screen_view(self) -> dict[str, Any]:
        """`/screen`: the jobs on the line (the screen cycles through them) and every station."""
        jobs = sorted(self.jobs.values(), key=lambda j: (j.body["created_ms"] or 0, j.body["id"]))
        return {**self._head("screen"), "stations": [self._station(k, story=False) for k in self._kinds()],
                "jobs": [self._summary(j) for j in jobs if j.body["status"] in ACTIVE]}

    def job_view(self, pid: str) -> dict[str, Any]:
        """`/job/<public id>`: one job's public fields (`job` None when the line does not have it)."""
        job = self.jobs.get(pid)
        return {**self._head("job"), "job": self._summary(job) if job is not None else None}

    def _kinds(self) -> list[str]:
        seen = sorted({n.body["kind"] for n in self.nodes.values() if n.body["kind"] not in self.kinds})
        return self.kinds + seen

    def _title(self, kind: str) -> str:
        story = self.line.public.stations.get(kind)
        if story is not None and story.title:
            return story.title
        titles = [n.body["title"] for _, n in sorted(self.nodes.items()) if n.body["kind"] == kind and n.body["title"]]
        return titles[0] if titles else kind.replace("_", " ").capitalize()

    def _about(self, kind: str) -> str:
        story = self.line.public.stations.get(kind)
        return story.about if story is not None else ""

    def _station(self, kind: str, story: bool) -> dict[str, Any]:
        nodes = [self._node_view(name, seen) for name, seen in sorted(self.nodes.items()) if seen.body["kind"] == kind]
        states = [n["state"] for n in nodes] or ["offline"]
        out: dict[str, Any] = {"kind": kind, "title": self._title(kind),
                               "state": min(states, key=lambda s: _SEVERITY.index(s) if s in _SEVERITY else 0),
                               "nodes": nodes}
        if story:
            tale = self.line.public.stations.get(kind)
            out["about"] = self._about(kind)
            out["trades"] = list(tale.trades) if tale is not None else []
        return out

    def _node_view(self, name: str, seen: _Node) -> dict[str, Any]:
        body = seen.body
        gone = name in self._stale or body["state"] == "offline"
        job = self.jobs.get(body["job"]) if body["job"] and not gone else None
        chip = None
        if body["job"] and not gone:
            chip = {"id": body["job"], "name": job.body["name"] if job else "",
                    "colour": job.body["colour"] if job else None,
                    "colour_rgb": self._rgb(job.body["colour"]) if job else None}
        return {"node": name, "title": body["title"], "state": "offline" if gone else body["state"],
                "mode": body["mode"], "progress": None if gone else body["progress"], "job": chip,
                "tripped": [] if gone else body["tripped"], "since_ms": body["since_ms"]}

    def _rgb(self, colour: str | None) -> str | None:
        spec = self.line.colours.get(colour) if colour else None
        return spec.srgb if spec is not None else None

    def _summary(self, job: _Job) -> dict[str, Any]:
        body = job.body
        steps = [{**s, "title": self._title(s["step"])} for s in body["steps"]]
        worth = sum(1.0 if s["status"] in ("done", "skipped") else (s["progress"] or 0) / 100
                    if s["status"] == "running" else 0.0 for s in steps)
        station = body["station"]
        return {**body, "colour_rgb": self._rgb(body["colour"]), "steps": steps,
                "station_title": self._title(station) if station else None,
                "station_about": self._about(station) if station else None,
                "progress": round(100 * worth / len(steps)) if steps else None,
                "snapshot": job.snapshot is not None}


def _timeless(body: dict[str, Any]) -> dict[str, Any]:
    """A node's payload without its heartbeat time: what a view shows of it."""
    return {k: v for k, v in body.items() if k != "updated_ms"}
