"""Updating a node from a signed bundle (`edge bundle apply`), and rolling back by itself.

    1. trust     the bundle's signer is listed under [updates.keys] of the station's line file,
                 and every file is what the manifest says: else refused, nothing written
    2. install   a new venv beside the current one (edge.install), from the bundle's wheels only;
                 a bundle already installed whole is not installed again
    3. check     the new version's `edge --version` is the manifest's, and its `edge check-config`
                 accepts the station file
    4. wait      for the node to finish the step it is running (its `status` on the console socket
                 names the job whose step it runs), unless forced
    5. switch    `current` to the new version, `previous` to the old, and restart the node
    6. health    the node answers `status` on a new socket, with the new version, its station
                 loaded, and still does a moment later: else `current` goes back, the node is
                 restarted again, and the update fails saying what the new version did not do

The node's `status` reply carries `version` (edge.node.Node.get_status) and `job`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge import bundle as bundles
from edge import install
from edge.install import PROJECT, InstallError, Layout

Say = Callable[[str], None]
RESTART = "systemctl restart fabrique-edge.service"
SETTLE_S = 3.0  # a new version must still answer this long after its first good answer
POLL_S = 0.5


class UpdateFailed(Exception):
    """The update stopped; the message says where, and what is on the node now."""


@dataclass(frozen=True)
class Plan:
    """How to apply a bundle to one node."""

    station: Path
    layout: Layout
    console: Path | None  # the node's console socket; None: no node to wait for or check
    restart: str = RESTART
    health_timeout: float = 90.0
    wait_idle: float = 600.0
    force: bool = False
    system_site_packages: bool = True


# ---------------------------------------------------------------- the node's console

def ask_status(path: Path, timeout: float = 5.0) -> dict[str, Any] | None:
    """The node's `status` on its console socket, None if nothing answers there."""
    from edge.selftest import ask_status as ask

    return ask(str(path), timeout)[0]


def socket_identity(path: Path | None) -> tuple[int, int] | None:
    """Which socket file is there (a restarted node binds a new one)."""
    try:
        st = os.stat(path) if path is not None else None
    except OSError:
        return None
    return (st.st_ino, st.st_mtime_ns) if st is not None else None


def wait_until_idle(path: Path, wait_s: float, say: Say, clock: Callable[[], float] = time.monotonic,
                    sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Wait until the node runs no step; None when it is idle (or not running), else what it
    is still doing after `wait_s`."""
    deadline = clock() + wait_s
    told: Any = None
    while True:
        status = ask_status(path)
        job = status.get("job") if status else None
        if status is None:
            say("the node does not answer on its console socket: nothing to wait for")
            return None
        if job is None:
            return None
        doing = f"job {job}'s {status.get('kind', 'station')} step on {status.get('node', 'the node')}"
        left = deadline - clock()
        if left <= 0:
            return doing
        if told != job:
            say(f"waiting for {doing} to end (up to {left:.0f} s; --force switches now)")
            told = job
        sleep(min(1.0, left))


def check_health(path: Path, version: str, before: tuple[int, int] | None, timeout: float, say: Say,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> str | None:
    """None if the restarted node runs `version` with its station loaded, and still does
    SETTLE_S later; else what it did not do, finishing the sentence "the new version did not ..."."""
    deadline = clock() + timeout
    problem = f"answer on its console socket {path} within {timeout:g} s"
    good_since: float | None = None
    while clock() < deadline:
        status = ask_status(path, timeout=min(5.0, max(0.5, deadline - clock())))
        fresh = before is None or socket_identity(path) != before
        if status is None or not fresh:
            good_since = None
        elif status.get("version") != version:
            problem = (f"start: version {status.get('version') or '(unknown)'} answered instead of {version} "
                       f"within {timeout:g} s (did the restart command restart the node?)")
            good_since = None
        elif "station" not in status and status.get("state") not in ("starting",):
            return f"load its station: {status.get('reason') or 'no station in its status'}"
        elif status.get("state") in ("starting", "stopped"):
            problem = f"get past '{status.get('state')}' within {timeout:g} s"
            good_since = None
        elif good_since is None:
            good_since = clock()
            say(f"the node answers as {version} ({status.get('state')}); checking it stays up")
        elif clock() - good_since >= SETTLE_S:
            return None
        sleep(POLL_S)
    if good_since is not None:
        problem = f"stay up for {SETTLE_S:g} s after it first answered"
    return problem


def restart(command: str, say: Say) -> str | None:
    """Run the restart command; None if it worked, else why not."""
    say(f"restarting the node: {command}")
    try:
        proc = subprocess.run(shlex.split(command), timeout=120, stdin=subprocess.DEVNULL)
    except (OSError, ValueError) as exc:
        return f"restart ({command}: {exc})"
    except subprocess.TimeoutExpired:
        return f"restart ({command} took more than 120 s)"
    return None if proc.returncode == 0 else f"restart ({command} exited {proc.returncode})"


# ---------------------------------------------------------------- applying a bundle

def apply(bundle: bundles.Bundle, trusted: dict[str, bytes], source: str, plan: Plan, say: Say) -> str:
    """Apply a bundle read with `bundles.read`; returns what happened in one line. UpdateFailed
    (or BundleError before anything was written) says what stopped it."""
    signer = bundles.check_signature(bundle, trusted, source)
    say(f"[1/6] {PROJECT} {bundle.version} ({bundle.name}), signed by {signer}")
    problem = install.check_machine(bundle.manifest)
    if problem:
        raise bundles.BundleError(f"{bundle.path}: {problem}: refused")
    layout = plan.layout
    in_image = Path(layout.root).resolve() != Path("/")
    if plan.console is None and not in_image and not plan.force:
        raise UpdateFailed(f"{plan.station} sets no [console] socket: the update can neither wait for the "
                           f"node's job nor check the new version; set `socket` under [console] (e.g. "
                           f"\"/run/fabrique-edge/console.sock\"), or --force to switch and restart unchecked")
    bundles.check_files(bundle, lambda text: say(f"[1/6] {text}"))
    layout.versions.mkdir(parents=True, exist_ok=True)
    with _locked(layout):
        was_current, was_previous = layout.active(), layout.before()
        try:
            if was_current == bundle.name and install.installed(layout, bundle.name, bundle.manifest_bytes):
                install.link_edge(layout)
                return f"{bundle.name} is already installed and current: nothing to do"
            new = _install(bundle, plan, say)
            _check_new_version(new, bundle.version, plan, say)
            install.link_edge(layout)
        except InstallError as exc:
            raise UpdateFailed(f"{exc}; nothing switched") from None
        if in_image:
            install.switch(layout, bundle.name)
            return f"current -> {bundle.name} in the image {layout.root} (no node restarted there)"
        if plan.console is not None:
            _wait_for_the_job(plan, plan.console, say)
        before = socket_identity(plan.console)
        say(f"[5/6] switching current to {bundle.name} (previous: {was_current or 'none'})")
        install.switch(layout, bundle.name)
        failed = restart(plan.restart, say)
        if plan.console is None:
            if failed is not None:
                raise UpdateFailed(f"current -> {bundle.name}, but the {failed} failed; not checked (--force "
                                   f"and no console socket)")
            return f"current -> {bundle.name}, node restarted, not checked (--force and no console socket)"
        if failed is None:
            say(f"[6/6] waiting up to {plan.health_timeout:g} s for the node to answer as {bundle.version}")
            failed = check_health(plan.console, bundle.version, before, plan.health_timeout, say)
        if failed is not None:
            raise UpdateFailed(_roll_back(plan, plan.console, was_current, was_previous, failed, say))
        removed = _prune(layout)
        kept = f"; removed older versions {', '.join(removed)}" if removed else ""
        return f"{PROJECT} {bundle.version} runs: current -> {bundle.name}, previous -> {was_current}{kept}"


def _install(bundle: bundles.Bundle, plan: Plan, say: Say) -> Path:
    layout = plan.layout
    if install.installed(layout, bundle.name, bundle.manifest_bytes):
        say(f"[2/6] {layout.seen_by_node(bundle.name)} is already installed: not installed again")
        return layout.version(bundle.name)
    staging = Path(tempfile.mkdtemp(prefix=".unpacking-", dir=layout.versions.parent))
    try:
        folder = bundles.unpack(bundle, staging, lambda text: say(f"[2/6] unpacking: {text}"))
        install.install_version(folder, bundle.manifest, bundle.manifest_bytes, layout,
                                system_site_packages=plan.system_site_packages, say=lambda t: say(f"[2/6] {t}"))
    except (InstallError, bundles.BundleError) as exc:
        raise UpdateFailed(f"{exc}; nothing switched, {layout.active() or 'no version'} stays current") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return layout.version(bundle.name)


def _check_new_version(new: Path, version: str, plan: Plan, say: Say) -> None:
    """The new version runs here and accepts this node's station file, before anything switches."""
    in_image = Path(plan.layout.root).resolve() != Path("/")
    edge = [str(new / "bin" / "python"), "-m", "edge"] if in_image else [str(new / "bin" / "edge")]
    say(f"[3/6] checking the new version: {' '.join(edge)} --version, check-config {plan.station}")
    keep = f"nothing switched ({new.name} stays installed beside the current version)"
    try:
        proc = subprocess.run([*edge, "--version"], capture_output=True, text=True, timeout=120)
        if proc.stdout.strip() != f"{PROJECT} {version}":
            raise UpdateFailed(f"the new version does not run here: `edge --version` said "
                               f"{(proc.stdout + proc.stderr).strip()[-300:]!r}, not '{PROJECT} {version}'; {keep}")
        proc = subprocess.run([*edge, "check-config", str(plan.station)], capture_output=True, text=True,
                              timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise UpdateFailed(f"the new version does not run here ({exc}); {keep}") from None
    if proc.returncode != 0:
        raise UpdateFailed(f"the new version refuses the station file {plan.station}:\n"
                           f"{(proc.stdout + proc.stderr).strip()}\n{keep}")


def _wait_for_the_job(plan: Plan, console: Path, say: Say) -> None:
    if plan.force:
        say("[4/6] --force: not waiting for the node to be between jobs")
        return
    say(f"[4/6] asking the node on {console} whether it runs a step")
    busy = wait_until_idle(console, plan.wait_idle, say)
    if busy is not None:
        raise UpdateFailed(f"the node still runs {busy} after {plan.wait_idle:g} s: nothing switched (the new "
                           f"version stays installed: apply again between jobs, or --force)")


def _roll_back(plan: Plan, console: Path, current: str | None, previous: str | None, failed: str,
               say: Say) -> str:
    layout = plan.layout
    if current is None:
        return f"the new version did not {failed}; there is no version before it to roll back to"
    say(f"the new version did not {failed}: rolling back to {current}")
    install.restore(layout, current, previous)
    version = _version_of(layout, current)
    before = socket_identity(console)
    again = restart(plan.restart, say)
    if again is None and version is not None:
        again = check_health(console, version, before, plan.health_timeout, say)
    back = "and it runs again" if again is None else f"but it did not come back either (it did not {again})"
    return f"rolled back to {current} {back}: the new version did not {failed}"


def _version_of(layout: Layout, name: str) -> str | None:
    try:
        return str(json.loads((layout.version(name) / install.RECORD).read_bytes())["version"])
    except (OSError, ValueError, KeyError):
        return None


def _prune(layout: Layout) -> list[str]:
    """Remove the versions that are neither current nor previous (an SD card is small), and
    what an update cut short (a power cut) left unpacked."""
    for left in layout.versions.parent.glob(".unpacking-*"):
        shutil.rmtree(left, ignore_errors=True)
    keep = {layout.active(), layout.before()}
    removed = []
    for folder in sorted(layout.versions.iterdir()):
        if folder.name not in keep and folder.is_dir():
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder.name)
    return removed


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    """One update at a time on a node."""
    with open(layout.versions.parent / ".update.lock", "a") as lock:  # "a": not even its time changes
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateFailed("another `edge bundle apply` is running on this node") from None
        yield
