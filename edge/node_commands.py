"""The node's own commands, declared once for the console, the local socket and MQTT:
status and jobs for anyone; launching a signed order; manual override for an operator at
the station (its serial console or local socket, never MQTT)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edge.control import CommandError, Param
from edge.hw import SafetyInterlock
from edge.ledger import JOB_RE, STEP_STATUSES
from edge.orders import verify_order

if TYPE_CHECKING:
    from edge.node import Node

log = logging.getLogger(__name__)


class NodeCommands:
    """Registers the commands on `node.commands`; handlers run on the node loop."""

    def __init__(self, node: Node):
        self.node = node
        self.driven: dict[str, float] = {}  # output -> monotonic deadline of its manual `drive`
        add = node.commands.register
        add("help", "list the commands, or tell one", lambda a: self.node.commands.help(a.get("command")),
            Param("command", required=False, help="a command's name, e.g. help resume"),
            examples=("help", "help drive"))
        add("status", "station state, devices, counters", lambda a: self.node.get_status())
        add("ping", "check the node answers", lambda a: "pong")
        add("login", "log in as the operator (the station's PIN; asked hidden when left out)", self._cmd_login,
            Param("pin", required=False, help="the operator PIN"), examples=("login",))
        add("logout", "log the operator out of this console", self._cmd_logout)
        add("note", "add a note to a job's ledger", self._cmd_note,
            Param("job", help="job id"), Param("text", rest=True, help="the note"),
            examples=("note V12345A visitor asked for a gift box",))
        add("job", "show a job's state", self._cmd_job, Param("job", help="job id"), examples=("job V12345A",))
        add("jobs", "list open jobs", lambda a: [s.to_json() for s in self.node.store.open_jobs()] if self.node.store else [])
        add("sync", "publish this node's version vector now (peers re-send what it lacks)", self._cmd_sync)
        add("archive", "archive closed jobs now", lambda a: self.node.archive())
        add("launch", "verify a signed order (the QR payload) and launch its job here", self._cmd_launch,
            Param("payload", rest=True, help="the QR code's text, FE1:..."))
        add("step", "record this station's step of a job (manual override)", self._cmd_step,
            Param("job", help="job id"), Param("status", help="started, done, failed or skipped"),
            Param("reason", required=False, rest=True), local_only=True,
            examples=("step V12345A done", "step V12345A failed part dropped"))
        add("override", "set any step of a job to a status, with a reason (operator's word is final)",
            self._cmd_override, Param("job", help="job id"), Param("step", help="station kind of the step"),
            Param("to", help="pending, running, done, failed or skipped"), Param("reason", rest=True),
            local_only=True, confirm=self._confirm_override,
            examples=("override V12345A printer done printed by hand",))
        add("complete", "record that the job was handed over", self._cmd_close("completed"),
            Param("job", help="job id"), Param("reason", required=False, rest=True), local_only=True,
            confirm=self._confirm_close("complete"), examples=("complete V12345A handed over at the desk",))
        add("cancel", "cancel a job", self._cmd_close("cancelled"), Param("job", help="job id"),
            Param("reason", required=False, rest=True), local_only=True, confirm=self._confirm_close("cancel"),
            examples=("cancel V12345A part broken",))
        add("mode", "auto: the station works by itself; manual: an operator drives it", self._cmd_mode,
            Param("mode", help="auto or manual"), local_only=True, examples=("mode manual", "mode auto"))
        add("reset", "clear a fault, or go on after a released emergency stop (nothing restarts by itself)",
            self._cmd_reset, local_only=True)
        add("retry", "set this station's failed step of a job back to pending, to be done again", self._cmd_retry,
            Param("job", help="job id"), local_only=True, examples=("retry V12345A",))
        add("skip", "skip this station's step of a job, with a reason", self._cmd_skip,
            Param("job", help="job id"), Param("reason", rest=True), local_only=True,
            examples=("skip V12345A engraved by hand",))
        add("hold", "feed hold on the station's laser or printer (relays off); `resume` goes on",
            self._cmd_hold, local_only=True)
        add("resume", "go on after a hold, a lid opened or a released emergency stop", self._cmd_resume,
            local_only=True)
        add("gcode", "send one G-code line to the station's laser or printer (manual mode only)", self._cmd_gcode,
            Param("line", rest=True, help="e.g. G0 X10 Y10"), local_only=True, examples=("gcode G0 X10 Y10",))
        add("home", "home the station's laser or printer ($H on GRBL, G28 on Marlin)", self._cmd_home,
            local_only=True)
        add("unlock", "clear a GRBL alarm lock ($X) once the cause is seen to", self._cmd_unlock, local_only=True)
        add("drive", "set an output (manual override; ends by itself after [console] drive_timeout_s or on "
            "`mode auto`; refused while a safety circuit is open)",
            self._cmd_drive, Param("device", help="output name"), Param("value", bool, help="on or off"),
            local_only=True, confirm=self._confirm_drive, examples=("drive conveyor on", "drive conveyor off"))

    # -- who is at the console
    def _cmd_login(self, args: dict[str, Any]) -> str:
        session, guard = self.node.commands.session, self.node.commands.guard
        if session is None or not session.local:
            raise CommandError("log in at the station's console")
        if guard is None:
            return "no operator PIN is set on this station: console commands need no login"
        if not args.get("pin"):
            raise CommandError("give the PIN: login <PIN> (a people's console asks for it hidden)")
        return guard.login(session, args["pin"])

    def _cmd_logout(self, _args: dict[str, Any]) -> str:
        session = self.node.commands.session
        if session is None or self.node.commands.guard is None:
            return "no operator PIN is set on this station"
        return self.node.commands.guard.logout(session)

    # -- questions before the commands that cannot be taken back
    def _confirm_close(self, verb: str) -> Callable[[dict[str, Any]], str | None]:
        def question(args: dict[str, Any]) -> str | None:
            state = self.node.store.job(args["job"]) if self.node.store else None
            if state is None:
                return None  # the command itself says there is no such job
            left = [s.step for s in state.steps if s.on_route and s.status not in ("done", "skipped")]
            if not left:
                return None
            return f"{verb} job {args['job']} with {len(left)} step(s) not done ({', '.join(left)})?"
        return question

    @staticmethod
    def _confirm_override(args: dict[str, Any]) -> str | None:
        return f"set the {args['step']} step of job {args['job']} to {args['to']}, whatever the station says?"

    def _confirm_drive(self, args: dict[str, Any]) -> str | None:
        device = self.node.config.hardware.get(args["device"])
        if device is None or not device.motion or args["value"] == device.safe_state:
            return None
        return f"drive {args['device']} {'on' if args['value'] else 'off'} moves it: is everyone clear of it?"

    def _cmd_note(self, args: dict[str, Any]) -> dict[str, Any]:
        self._job_or_fail(args["job"])  # a note never creates a job
        return self.node.record(args["job"], "note", {"text": args["text"]}).to_json()

    def _cmd_launch(self, args: dict[str, Any]) -> dict[str, Any]:
        if self.node.store is None or self.node.line is None:
            raise CommandError("this node has no line file loaded")
        verdict = verify_order(args["payload"], self.node.line, self.node.store.best_time_s())
        if not verdict.ok or verdict.order is None:
            self.node.counters["rejected_orders"] = self.node.counters.get("rejected_orders", 0) + 1
            raise CommandError(f"order refused: {verdict.reason}: {verdict.detail}")
        order = verdict.order
        existing = self.node.store.job(order.order_id)
        if existing is not None and existing.created_by:
            raise CommandError(f"order {order.order_id} was already launched ({existing.status})")
        route = self.node.line.products[order.product].route
        self.node.record(order.order_id, "created", order.launch_data(route))
        return {"job": order.order_id, "product": order.product, "route": list(route)}

    def _job_or_fail(self, job: str) -> Any:
        if not JOB_RE.fullmatch(job):
            raise CommandError(f"{job[:80]!r} is not a job id (1-64 of A-Z a-z 0-9 _ . : -)")
        state = self.node.store.job(job) if self.node.store else None
        if state is None or not state.created_by:
            raise CommandError(f"no job {job!r} on this node" + (" (only events of it, no launch yet)"
                                                                  if state is not None else ""))
        return state

    def _cmd_step(self, args: dict[str, Any]) -> dict[str, Any]:
        types = {"started": "step_started", "done": "step_done", "failed": "step_failed", "skipped": "step_skipped"}
        if args["status"] not in types:
            raise CommandError(f"status {args['status']!r} is not one of {', '.join(types)}")
        self._job_or_fail(args["job"])
        data = {"step": self.node.config.station.kind, "manual": True}
        if args.get("reason"):
            data["reason"] = args["reason"]
        self.node.record(args["job"], types[args["status"]], data)
        return self._job_or_fail(args["job"]).to_json()

    def _cmd_override(self, args: dict[str, Any]) -> dict[str, Any]:
        self._job_or_fail(args["job"])
        if args["to"] not in STEP_STATUSES:
            raise CommandError(f"{args['to']!r} is not one of {', '.join(STEP_STATUSES)}")
        self.node.record(args["job"], "override", {"step": args["step"], "to": args["to"], "reason": args["reason"]})
        return self._job_or_fail(args["job"]).to_json()

    def _cmd_close(self, kind: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
        def close(args: dict[str, Any]) -> dict[str, Any]:
            state = self._job_or_fail(args["job"])
            if not state.is_open:
                raise CommandError(f"job {args['job']} is already {state.status}")
            self.node.record(args["job"], kind, {"reason": args.get("reason") or ""})
            return self._job_or_fail(args["job"]).to_json()
        return close

    def _cmd_job(self, args: dict[str, Any]) -> Any:
        if not JOB_RE.fullmatch(args["job"]):
            raise CommandError(f"{args['job'][:80]!r} is not a job id (1-64 of A-Z a-z 0-9 _ . : -)")
        state = self.node.store.job(args["job"]) if self.node.store else None
        if state is None:
            raise CommandError(f"no job {args['job']!r} on this node")
        return state.to_json()

    def _cmd_sync(self, _args: dict[str, Any]) -> dict[str, Any]:
        if self.node.sync is None:
            raise CommandError("MQTT is disabled on this node")
        self.node.sync.send_vector()
        return {"connected": self.node.sync.connected, "vector": self.node.store.vector() if self.node.store else {}}

    def _engine(self) -> Any:
        if self.node.station is None:
            raise CommandError(f"no station logic for kind {self.node.config.station.kind!r} on this node")
        return self.node.station

    def _cmd_mode(self, args: dict[str, Any]) -> dict[str, Any]:
        if args["mode"] not in ("auto", "manual"):
            raise CommandError(f"mode {args['mode']!r} is not auto or manual")
        if args["mode"] == "auto":  # before the station looks at the line again and drives its outputs
            self.release_all("the station went back to auto")
        result = self._engine().set_mode(args["mode"])
        self.node.record_operator("mode", result, f"mode {result['mode']}")
        return result

    def _cmd_reset(self, _args: dict[str, Any]) -> dict[str, Any]:
        try:
            result = self._engine().reset()
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        self.node.record_operator("reset", result, "reset, cleared " + (" and ".join(result["cleared"]) or "nothing"))
        return result

    def _cmd_retry(self, args: dict[str, Any]) -> dict[str, Any]:
        state = self._job_or_fail(args["job"])
        kind = self.node.config.station.kind
        step = state.step(kind)
        if kind == "transfer" and state.position == "transfer" and (step is None or step.status == "done"):
            return self._retry_move(args["job"])
        if step is None or step.status not in ("failed", "running"):
            raise CommandError(f"{kind} step of {args['job']} is {step.status if step else 'not on its route'}: "
                               f"only a failed or stuck step is retried")
        self.node.record(args["job"], "override", {"step": kind, "to": "pending", "reason": "retry by operator"})
        return self._job_or_fail(args["job"]).to_json()

    def _retry_move(self, job: str) -> dict[str, Any]:
        """A move between two stations cut short (a power cut on the belt): the operator has put
        the tray back where it left from; the ledger says so, and the transfer moves it again."""
        assert self.node.store is not None
        left_from = ""
        for ev in sorted(self.node.store.job_events(job), key=lambda e: e.key):
            if ev.type == "step_arrived" and ev.step != "transfer":
                left_from = ev.step
        if not left_from:
            raise CommandError(f"job {job} is on the belt but never reached a station: put its tray back at the "
                               f"start and `skip` or `override` its steps as they are")
        self.node.record(job, "step_arrived", {"step": left_from, "carrier": self._job_or_fail(job).carrier,
                                               "reason": f"retry by operator: the tray is back at the {left_from}"})
        return self._job_or_fail(job).to_json()

    def _cmd_skip(self, args: dict[str, Any]) -> dict[str, Any]:
        state = self._job_or_fail(args["job"])
        if not state.is_open:
            raise CommandError(f"job {args['job']} is already {state.status}")
        self.node.record(args["job"], "step_skipped", {"step": self.node.config.station.kind,
                                                       "reason": args["reason"], "manual": True})
        return self._job_or_fail(args["job"]).to_json()

    # -- the station's G-code machine (laser, printer)
    def _machine(self, safe: bool = True) -> Any:
        machines = self.node.board.gcode
        if not machines:
            raise CommandError("this station has no G-code machine (a serial device with protocol grbl or marlin)")
        if safe and self.node.board.tripped():
            raise CommandError(f"refused: safety circuit open: {', '.join(self.node.board.tripped())}")
        return next(iter(machines.values()))

    def _send(self, what: str, line: str) -> dict[str, Any]:
        machine = self._machine()
        try:
            machine.command(line)
        except Exception as exc:  # refused, alarm, busy, unplugged: the operator reads why
            raise CommandError(str(exc)) from None
        self.node.record_operator(what, {"line": line}, f"{what} ({line}) on {machine.name}")
        return {"device": machine.name, "sent": line}

    def _cmd_hold(self, _args: dict[str, Any]) -> dict[str, Any]:
        machine = self._machine()  # with a safety circuit open the machine is held already
        self._engine().hold(machine.name)
        self.node.record_operator("hold", {"device": machine.name}, f"hold on {machine.name}")
        return {"device": machine.name, "held": True}

    def _cmd_resume(self, _args: dict[str, Any]) -> dict[str, Any]:
        machine = self._machine()
        result = self._engine().resume()
        self.node.record_operator("resume", result, f"resume on {machine.name}")
        return result

    def _cmd_gcode(self, args: dict[str, Any]) -> dict[str, Any]:
        if self._engine().mode != "manual":
            raise CommandError("gcode is for manual mode: `mode manual` first")
        return self._send("gcode", args["line"].strip())

    def _cmd_home(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self._send("home", "$H" if self._machine().protocol == "grbl" else "G28")

    def _cmd_unlock(self, _args: dict[str, Any]) -> dict[str, Any]:
        if self._machine().protocol != "grbl":
            raise CommandError("unlock clears a GRBL alarm; this machine is not a GRBL")
        return self._send("unlock", "$X")

    def _cmd_drive(self, args: dict[str, Any]) -> dict[str, Any]:
        device, value = args["device"], args["value"]
        try:
            self.node.board.drive(device, value)
        except KeyError as exc:
            raise CommandError(str(exc).strip("'\"")) from None
        except SafetyInterlock as exc:
            raise CommandError(str(exc)) from None
        spec = self.node.config.hardware.get(device)
        timeout = self.node.config.console.drive_timeout_s
        manual = getattr(self.node.station, "mode", "manual") == "manual"
        if spec is not None and value != spec.safe_state and manual:  # in auto the station's logic owns it
            self.driven[device] = time.monotonic() + timeout if timeout else float("inf")
        else:
            self.driven.pop(device, None)
        self.node.record_operator("drive", {"device": device, "value": value},
                                  f"drive {device} {'on' if value else 'off'}")
        out: dict[str, Any] = {device: value}
        if device in self.driven and timeout:
            out["until"] = f"back to {'on' if spec and spec.safe_state else 'off'} in {timeout} s or on `mode auto`"
        return out

    def tick(self) -> None:
        """On the loop, once a second: a manual `drive` that has run its time goes back to safe."""
        now = time.monotonic()
        for device, deadline in list(self.driven.items()):
            if now >= deadline:
                self._release(device, f"drive_timeout_s ({self.node.config.console.drive_timeout_s} s) ran out")

    def release_all(self, why: str) -> None:
        for device in list(self.driven):
            self._release(device, why)

    def _release(self, device: str, why: str) -> None:
        self.driven.pop(device, None)
        spec = self.node.config.hardware.get(device)
        if spec is None or spec.safe_state is None:
            return
        try:
            self.node.board.drive(device, spec.safe_state)
        except (KeyError, SafetyInterlock) as exc:  # a safety circuit already put it safe
            log.info("manual drive of %s ends: %s", device, exc)
            return
        log.warning("manual drive of %s ends (%s): back to %s", device, why, "on" if spec.safe_state else "off")
        self.node.record_operator("drive_ended", {"device": device, "why": why}, f"{device} back to safe: {why}")
