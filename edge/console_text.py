"""What a person reads at the console: the node's replies rendered as short text blocks and
tables (`status`, `jobs`, `job X`, `help`), and the machine face's reply lines read back.

Pure functions, shared by the serial console's people face (edge/console.py) and the
`edge console` client (edge/commands/console.py). Plain text only: no colours, and every
control character a node or a peer could put in a field is shown escaped, never sent raw to
the operator's terminal.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from edge.control import Reply

WIDTH = 79  # a serial terminal's width, less one
CONFIRM_SUFFIX = "; repeat with --force to do it anyway"  # what edge/control.py ends a question with
PIN_NEEDED = "needs the operator PIN"
PIN_LOCKED = "the operator PIN is locked"
# commands whose result is one job (its state after the change)
JOB_RESULTS = {"job", "step", "override", "complete", "cancel", "retry", "skip"}
STEP_STATUSES = ("started", "done", "failed", "skipped")  # `step <job> <status>`
OVERRIDE_STATUSES = ("pending", "running", "done", "failed", "skipped")  # `override ... <to>`


# ---------------------------------------------------------------- text that is safe to show

def safe(text: Any) -> str:
    """`text` with every control character (ESC, CR, BEL...) escaped, newlines and tabs kept."""
    text = str(text)
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if ch in "\n\t" or ch.isprintable():
            out.append(ch)
        elif 0xD800 <= ord(ch) <= 0xDFFF:  # an undecodable byte from the wire
            out.append("?")
        else:
            out.append(repr(ch)[1:-1])
    return "".join(out)


def one_line(text: Any, limit: int = 200) -> str:
    """A field squeezed onto one line (a reason, a note), cut at `limit` characters."""
    flat = " ".join(safe(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


# ---------------------------------------------------------------- the machine face, read back

def reply_from_wire(line: str) -> Reply | None:
    """An `ok <JSON>` / `error <why>` line as a Reply (with `ask` told from the error's
    words, since the wire does not carry it); None for any other line (a banner)."""
    line = line.rstrip("\r\n")
    if line.startswith("ok ") or line == "ok":
        body = line[3:]
        try:
            return Reply(True, json.loads(body) if body else None)
        except ValueError:
            return Reply(True, body)
    if line.startswith("error ") or line == "error":
        why = line[6:]
        return Reply(False, error=why, ask=ask_of(why))
    return None


def ask_of(error: str | None) -> str | None:
    """What an error asks of the operator: "confirm", "pin" or nothing."""
    if not error:
        return None
    if error.endswith(CONFIRM_SUFFIX):
        return "confirm"
    if PIN_NEEDED in error or PIN_LOCKED in error:
        return "pin"
    return None


def question_of(reply: Reply, command: str = "") -> str:
    """The question of a reply that asks to confirm, without the advice for scripts (nor the
    command's name it starts with)."""
    text = safe(reply.error or "").removesuffix(CONFIRM_SUFFIX)
    return text.removeprefix(f"{command}: ") if command else text


def with_force(line: str) -> str:
    words = line.split()
    return line if "--force" in words[1:] else line.rstrip() + " --force"


# ---------------------------------------------------------------- replies for people

def render(line: str, reply: Reply) -> str:
    """A reply as a person reads it, chosen by the command of `line`."""
    if not reply.ok:
        return "error: " + safe(reply.error or "the command failed")
    words = line.split()
    name = words[0].lower() if words else ""
    result = reply.result
    try:
        if name == "status" and isinstance(result, Mapping):
            return render_status(result)
        if name == "jobs" and isinstance(result, list):
            return render_jobs(result)
        if name in JOB_RESULTS and isinstance(result, Mapping) and isinstance(result.get("steps"), list):
            return render_job(result)
        if name == "help" and isinstance(result, list):
            return render_help(result)
        if name == "help" and isinstance(result, Mapping) and "command" in result:
            return render_help_one(result)
        if name == "drive" and isinstance(result, Mapping):
            return render_value({k: (on_off(v) if isinstance(v, bool) else v) for k, v in result.items()})
    except (TypeError, ValueError, KeyError, AttributeError):
        pass  # a shape this client does not know yet: the plain rendering below
    return render_value(result)


def on_off(value: Any) -> str:
    return "on" if value else "off"


def _scalar(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:g}"
    return safe(value)


def _is_scalar(value: Any) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def render_value(value: Any, depth: int = 0) -> str:
    """Anything else: `key: value` lines (nested blocks indented), lists as items or a table."""
    if depth > 4:
        return safe(json.dumps(value, default=str))
    if value is None:
        return "ok" if depth == 0 else "-"
    if _is_scalar(value):
        return _scalar(value)
    if isinstance(value, Mapping):
        if not value:
            return "(nothing)"
        width = min(max(len(safe(k)) for k in value), 24)
        lines = []
        for key, item in value.items():
            label = safe(key)
            if _is_scalar(item) or (isinstance(item, list) and all(_is_scalar(x) for x in item)):
                text = ", ".join(_scalar(x) for x in item) if isinstance(item, list) else _scalar(item)
                lines.append(f"{label + ':':<{width + 1}} {text or '(none)'}")
            else:
                lines.append(f"{label}:")
                lines.append(textwrap.indent(render_value(item, depth + 1), "  "))
        return "\n".join(lines)
    if isinstance(value, list | tuple):
        if not value:
            return "(none)"
        if all(_is_scalar(x) for x in value):
            return "\n".join(_scalar(x) for x in value)
        if all(isinstance(x, Mapping) and all(_is_scalar(v) for v in x.values()) for x in value):
            keys: list[str] = []
            for item in value:
                keys += [k for k in item if k not in keys]
            return table(keys, [[_scalar(item.get(k)) for k in keys] for item in value])
        return "\n".join("- " + render_value(x, depth + 1).replace("\n", "\n  ") for x in value)
    return safe(value)


def table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Left-aligned columns, two spaces apart, a dashed rule under the headers."""
    rows = [[one_line(c, 60) for c in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _rows(pairs: Iterable[tuple[str, str]], indent: str = "") -> list[str]:
    pairs = list(pairs)
    width = max((len(k) for k, _ in pairs), default=0)
    return [f"{indent}{k:<{width}}  {v}".rstrip() for k, v in pairs]


# ---------------------------------------------------------------- status

def device_line(status: Mapping[str, Any]) -> tuple[str, str]:
    """(value, what it is) of one device's status."""
    kind = str(status.get("type", "?"))
    if kind == "digital_output":
        return on_off(status.get("value")), "output" + ("" if status.get("safe", True) else ", out of its safe state")
    if kind == "digital_input":
        return on_off(status.get("value")), "input"
    if "tripped" in status:
        return ("TRIPPED" if status["tripped"] else "ok"), kind.replace("_", " ")
    if kind == "serial":
        parts = [p for p in (status.get("protocol"), status.get("port")) if p]
        job = status.get("job")
        if isinstance(job, Mapping):
            parts.append(f"job {job.get('job')} {job.get('done')}/{job.get('total')}" + (" held" if job.get("held") else ""))
        if status.get("fault"):
            parts.append("fault: " + one_line(status["fault"], 80))
        return ("open" if status.get("open") else "closed"), "serial " + " ".join(parts)
    if kind == "camera":
        what = f"camera ({status.get('source')})" + (f", error: {one_line(status['error'], 80)}" if status.get("error") else "")
        return f"{status.get('frames', 0)} frames", what
    if kind == "scanner":
        what = f"scanner ({status.get('source')}), {status.get('rejected', 0)} rejected"
        if status.get("fault"):
            what += ", fault: " + one_line(status["fault"], 80)
        return f"{status.get('scans', 0)} scans", what
    rest = ", ".join(f"{k} {_scalar(v)}" for k, v in status.items() if k != "type" and _is_scalar(v))
    return "-", f"{kind} {rest}".strip()


def render_status(status: Mapping[str, Any]) -> str:
    """`status` as a short block: state, reason, job, mode, devices with values, MQTT, outbox."""
    station = status.get("station") if isinstance(status.get("station"), Mapping) else {}
    state = _scalar(status.get("state"))
    reasons = [r for r in str(status.get("reason") or "").split("; ") if r]  # each fault whole, on its line
    pairs = [("node", f"{safe(status.get('node', '?'))} ({safe(status.get('kind', '?'))})"),
             ("state", state + (": " + one_line(reasons[0], 300) if reasons else ""))]
    pairs += [("", "  " + one_line(r, 300)) for r in reasons[1:]]
    pairs += [("mode", _scalar(station.get("mode"))), ("job", _scalar(status.get("job")))]
    if station.get("fault"):
        pairs.append(("fault", one_line(station["fault"])))
    if station.get("latched"):
        pairs.append(("latched", "an emergency stop was released: `reset` to go on"))
    message = station.get("message")
    if isinstance(message, Mapping) and message.get("text"):
        pairs.append(("message", one_line(message["text"])))
    mqtt = status.get("mqtt")
    tail = [("mqtt", ("connected" if mqtt.get("connected") else "not connected") if isinstance(mqtt, Mapping)
             else "off")]
    if "outbox" in status:
        tail.append(("outbox", f"{status['outbox']} event(s) to send"))
    rows = _rows(pairs + tail)
    lines = rows[:len(pairs)]
    devices = status.get("devices")
    if isinstance(devices, Mapping) and devices:
        lines.append("devices:")
        named = [(safe(name), *device_line(d if isinstance(d, Mapping) else {})) for name, d in devices.items()]
        nw = max(len(n) for n, _, _ in named)
        vw = max(len(v) for _, v, _ in named)
        lines += [f"  {n:<{nw}}  {v:<{vw}}  {w}".rstrip() for n, v, w in named]
    return "\n".join(lines + rows[len(pairs):])


# ---------------------------------------------------------------- jobs

def render_jobs(jobs: Sequence[Any]) -> str:
    """`jobs` as a table: job, status, position, next step, carrier."""
    if not jobs:
        return "no open jobs"
    rows = [[j.get("job"), j.get("status"), j.get("position") or "-", j.get("next_step") or "-",
             j.get("carrier") or "-"] for j in jobs if isinstance(j, Mapping)]
    return table(["job", "status", "position", "next step", "carrier"], rows) + f"\n{len(rows)} open job(s)"


def render_job(job: Mapping[str, Any]) -> str:
    """One job: a head line, then its steps as a table, notes and conflicts."""
    head = f"job {safe(job.get('job'))}: {_scalar(job.get('status'))}"
    if job.get("product"):
        head += f" ({safe(job['product'])})"
    where = [f"{k} {safe(job[f])}" for k, f in (("at", "position"), ("carrier", "carrier"), ("next step", "next_step"))
             if job.get(f)]
    lines = [head] + (["  ".join(where)] if where else [])
    steps = [s for s in job.get("steps", []) if isinstance(s, Mapping)]
    if steps:
        rows = []
        for s in steps:
            note = s.get("reason") or ""
            if s.get("progress") is not None and s.get("status") == "running":
                note = f"{s['progress']}%" + (f" {note}" if note else "")
            if not s.get("on_route", True):
                note = ("off route " + note).strip()
            rows.append([s.get("step"), s.get("status"), s.get("node") or "-", s.get("attempts", 0), note])
        lines.append(table(["step", "status", "node", "tries", "note"], rows))
    notes = job.get("notes") or []
    if notes:
        lines.append("notes:")
        lines += [f"  {one_line(n)}" for n in notes]
    conflicts = [c for c in job.get("conflicts") or [] if isinstance(c, Mapping)]
    if conflicts:
        lines.append("conflicts:")
        lines += [f"  {safe(c.get('kind'))}: {one_line(c.get('detail') or '')}".rstrip(": ") for c in conflicts]
    return "\n".join(lines)


# ---------------------------------------------------------------- help

def render_help(commands: Sequence[Any]) -> str:
    """`help` as an aligned list: `usage   what`, station-only commands marked `*`."""
    items = [c for c in commands if isinstance(c, Mapping)]
    if not items:
        return "(no commands)"
    width = min(max(len(safe(c.get("command", ""))) for c in items), 28)  # a longer usage has its own line
    indent = " " * (width + 5)
    lines = []
    for c in items:
        usage = safe(c.get("command", ""))
        mark = "*" if c.get("console_only") else " "
        wrapped = textwrap.wrap(safe(c.get("help", "")), max(WIDTH - len(indent), 30)) or [""]
        if len(usage) > width:
            lines.append(f"  {usage}")
            lines.append(f"  {'':<{width}} {mark} {wrapped[0]}")
        else:
            lines.append(f"  {usage:<{width}} {mark} {wrapped[0]}")
        lines += [indent + w for w in wrapped[1:]]
    if any(c.get("console_only") for c in items):
        lines.append("* at the station only (its serial console or local socket)")
    lines.append("help <command> tells one; Tab completes; Up recalls")
    return "\n".join(lines)


def render_help_one(one: Mapping[str, Any]) -> str:
    """`help drive`: usage, what, parameters, examples, and what it asks."""
    lines = [safe(one.get("command", ""))]
    lines += ["  " + w for w in textwrap.wrap(safe(one.get("help", "")), WIDTH - 2)]
    params = one.get("params") or {}
    if isinstance(params, Mapping) and params:
        lines.append("parameters:")
        lines += _rows(((safe(k), safe(v)) for k, v in params.items()), "  ")
    examples = one.get("examples") or []
    if examples:
        lines.append("examples:")
        lines += [f"  {safe(e)}" for e in examples]
    notes = []
    if one.get("console_only"):
        notes.append("at the station only")
    if one.get("asks_to_confirm"):
        notes.append("asks to confirm (a script adds --force)")
    if one.get("needs_pin"):
        notes.append("needs the PIN (`login`)")
    if notes:
        lines.append("; ".join(notes))
    return "\n".join(lines)


# ---------------------------------------------------------------- prompt and completion words

def prompt_from_status(status: Any) -> str:
    """`laser-1 [auto|fault]> ` from a `status` result."""
    if not isinstance(status, Mapping):
        return "edge> "
    station = status.get("station") if isinstance(status.get("station"), Mapping) else {}
    return f"{one_line(status.get('node', 'edge'), 40)} [{one_line(station.get('mode') or '-', 20)}|" \
           f"{one_line(status.get('state', '?'), 20)}]> "


def params_from_help(commands: Any) -> dict[str, list[str]]:
    """Each command's parameter names, read from the usages of a `help` result
    (`drive <device> <value>` -> {"drive": ["device", "value"]})."""
    out: dict[str, list[str]] = {}
    if not isinstance(commands, list):
        return out
    for c in commands:
        if not isinstance(c, Mapping) or not isinstance(c.get("command"), str):
            continue
        name, *params = c["command"].split()
        out[name] = [p.strip("<>[].") for p in params]
    return out


def words_from(status: Any, jobs: Any, commands: Iterable[str]) -> dict[str, list[str]]:
    """The completion words of a console: commands, devices (from `status`), open jobs (from `jobs`)."""
    devices = sorted(status.get("devices", {})) if isinstance(status, Mapping) and isinstance(
        status.get("devices"), Mapping) else []
    open_jobs = [j["job"] for j in jobs if isinstance(j, Mapping) and isinstance(j.get("job"), str)] \
        if isinstance(jobs, list) else []
    return {"commands": sorted(commands), "devices": devices, "jobs": open_jobs}
