#!/usr/bin/env python3
"""The node's install layout, and the first install from an unpacked bundle (standard library
only: every bundle carries this file as `install.py`, for a blank card where edge is not
installed yet; `edge bundle apply` uses the same functions for updates).

    /opt/fabrique-edge/
        versions/
            0.1.0-3f9a0c2e/              a virtual environment per bundle: <version>-<8 hex of the
                fabrique-bundle.json     sha256 of its manifest.json>; the manifest, written last:
                                         a version folder without it is an unfinished install
            0.1.1-77c1d2e4/
        current -> versions/0.1.1-77c1d2e4    what runs: the unit runs /usr/local/bin/edge
        previous -> versions/0.1.0-3f9a0c2e   the version before: where a rollback goes
    /usr/local/bin/edge -> /opt/fabrique-edge/current/bin/edge

`current` and `previous` are switched atomically (a new link renamed over the old one), so
`edge` is always one whole version. `root` writes all of it inside an image folder: links then
point where the booted node will see them.

The first install, as root, from the unpacked bundle:

    sudo python3 fabrique-edge-0.1.0-aarch64/install.py

checks every file against manifest.json, makes the venv with the Python that runs it (with
the system's site packages, so apt's python3-picamera2 and python3-lgpio are seen), installs
with pip from the bundle's wheels only (`--no-index`), switches `current`, links `edge`. This
checks the files are the ones the manifest lists; who signed the manifest is checked by
`edge bundle verify`, which needs the installed edge (docs/bundles.md).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROJECT = "fabrique-edge"
PREFIX = "/opt/fabrique-edge"
BIN_DIR = "/usr/local/bin"
MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
WHEELS = "wheels"
RECORD = "fabrique-bundle.json"  # in each version folder: the manifest it was installed from
FORMAT = 1

Say = Callable[[str], None]


class InstallError(Exception):
    """An install that cannot go on; the message says why and what to do."""


@dataclass(frozen=True)
class Layout:
    """Where versions, the `current` and `previous` links and the `edge` link live. Paths are
    as the node sees them; `root` is the folder they are written under (an image, a test)."""

    prefix: str = PREFIX
    bin_dir: str = BIN_DIR
    root: str = "/"

    def here(self, path: str) -> Path:
        """A path as the node sees it -> where it is on this machine."""
        return Path(self.root) / path.lstrip("/")

    @property
    def versions(self) -> Path:
        return self.here(f"{self.prefix}/versions")

    @property
    def current(self) -> Path:
        return self.here(f"{self.prefix}/current")

    @property
    def previous(self) -> Path:
        return self.here(f"{self.prefix}/previous")

    @property
    def edge_link(self) -> Path:
        return self.here(f"{self.bin_dir}/edge")

    def version(self, name: str) -> Path:
        return self.versions / name

    def seen_by_node(self, name: str) -> str:
        return f"{self.prefix.rstrip('/')}/versions/{name}"

    def active(self) -> str | None:
        """The version `current` points at (its folder name), None before the first install."""
        return _target(self.current)

    def before(self) -> str | None:
        """The version `previous` points at."""
        return _target(self.previous)


def _target(link: Path) -> str | None:
    try:
        return Path(os.readlink(link)).name
    except (FileNotFoundError, OSError):
        return None


# ---------------------------------------------------------------- the manifest and its files

def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def version_name(manifest: dict[str, Any], manifest_bytes: bytes) -> str:
    """The version folder of a bundle: `0.1.0-3f9a0c2e` (8 hex of its manifest's sha256)."""
    return f"{manifest['version']}-{hashlib.sha256(manifest_bytes).hexdigest()[:8]}"


def read_manifest(folder: Path) -> tuple[dict[str, Any], bytes]:
    """The manifest of an unpacked bundle and its exact bytes; InstallError if unusable."""
    path = folder / MANIFEST
    try:
        raw = path.read_bytes()
        manifest = json.loads(raw)
    except FileNotFoundError:
        raise InstallError(f"{path} is missing: run install.py from the unpacked bundle") from None
    except (OSError, ValueError) as exc:
        raise InstallError(f"{path} cannot be read: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT or manifest.get("project") != PROJECT:
        raise InstallError(f"{path} is not the manifest of a {PROJECT} bundle (format {FORMAT})")
    return manifest, raw


def check_files(folder: Path, manifest: dict[str, Any], say: Say = print) -> list[str]:
    """Every file the manifest lists, with its size and sha256, and no other wheel (pip would
    take it): the problems found, none when the folder is exactly what was signed."""
    problems = []
    files = manifest.get("files", [])
    total = sum(int(f["size"]) for f in files)
    say(f"checking {len(files)} files ({total / 1e6:.0f} MB) against {MANIFEST}")
    for entry in files:
        path = folder / entry["path"]
        if not path.is_file():
            problems.append(f"{entry['path']}: missing")
        elif path.stat().st_size != entry["size"]:
            problems.append(f"{entry['path']}: {path.stat().st_size} bytes, the manifest says {entry['size']}")
        elif sha256_of(path) != entry["sha256"]:
            problems.append(f"{entry['path']}: its sha256 differs from the manifest's (changed or damaged)")
    listed = {f["path"] for f in files}
    wheels = folder / WHEELS
    for path in sorted(wheels.iterdir()) if wheels.is_dir() else ():
        if f"{WHEELS}/{path.name}" not in listed:
            problems.append(f"{WHEELS}/{path.name}: not in the manifest (remove it)")
    return problems


def check_machine(manifest: dict[str, Any]) -> str | None:
    """Why this bundle cannot be installed with this Python on this machine, or None."""
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    if manifest.get("python") != python:
        return f"the bundle is for Python {manifest.get('python')}; this is Python {python} ({sys.executable})"
    machine = platform.machine()
    if manifest.get("machine") not in (machine, "any"):
        hint = " (a 32-bit system: flash Raspberry Pi OS 64-bit)" if machine.startswith("armv") else ""
        return f"the bundle is for {manifest.get('machine')}; this machine is {machine}{hint}"
    return None


# ---------------------------------------------------------------- installing a version

def pip_environment() -> dict[str, str]:
    """The environment pip runs in: no pip configuration but ours (a node's pip.conf may name
    other indexes or folders of wheels; the bundle's wheels are the only source)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def installed(layout: Layout, name: str, manifest_bytes: bytes) -> bool:
    """This exact bundle is installed, whole, as version `name`."""
    try:
        return (layout.version(name) / RECORD).read_bytes() == manifest_bytes
    except OSError:
        return False


def install_version(folder: Path, manifest: dict[str, Any], manifest_bytes: bytes, layout: Layout, *,
                    system_site_packages: bool = True, python: str | None = None, say: Say = print,
                    output: Any = None) -> tuple[str, bool]:
    """Make the version folder of an unpacked, checked bundle: (its name, False if it was
    already installed). A failed install leaves nothing behind; InstallError says why."""
    name = version_name(manifest, manifest_bytes)
    target = layout.version(name)
    if installed(layout, name, manifest_bytes):
        return name, False
    if target.exists():  # an install cut short (power, full disk): start again
        shutil.rmtree(target)
    pip = next((f["path"] for f in manifest["files"] if Path(f["path"]).name.startswith("pip-")), None)
    if pip is None:
        raise InstallError("the bundle carries no pip wheel: make it again with `edge bundle create`")
    base = python or getattr(sys, "_base_executable", sys.executable)
    target.parent.mkdir(parents=True, exist_ok=True)
    umask = os.umask(0o022)  # the service user reads what root installs, whatever sudo's umask
    try:
        venv = [base, "-m", "venv", "--without-pip", *(["--system-site-packages"] if system_site_packages else []),
                str(target)]
        say(f"making the environment {layout.seen_by_node(name)}")
        _run(venv, "making the virtual environment", output)
        wheels = len([f for f in manifest["files"] if f["path"].startswith(f"{WHEELS}/")])
        say(f"installing {PROJECT} {manifest['version']} from the bundle's {wheels} wheels (no network)")
        _run([str(target / "bin" / "python"), str(folder / pip / "pip"), "install", "--no-index", "--find-links",
              str(folder / WHEELS), "--no-cache-dir", "--no-warn-script-location", "--progress-bar", "off",
              f"{PROJECT}=={manifest['version']}", "pip"], "pip install", output, pip_environment())
        if Path(layout.root).resolve() != Path("/"):
            _relocate(target, layout.seen_by_node(name))
        _write(target / RECORD, manifest_bytes)
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    finally:
        os.umask(umask)
    return name, True


def _run(argv: list[str], what: str, output: Any = None, env: dict[str, str] | None = None) -> None:
    try:
        proc = subprocess.run(argv, stdout=output, stderr=subprocess.STDOUT if output is not None else None,
                              env=env)
    except OSError as exc:
        raise InstallError(f"{what}: {argv[0]}: {exc.strerror or exc}") from None
    if proc.returncode != 0:
        raise InstallError(f"{what} failed (exit {proc.returncode}); nothing was switched")


def _relocate(venv: Path, seen: str) -> None:
    """A venv made inside an image folder names that folder in its scripts: name the path the
    booted node will see instead."""
    here = str(venv).encode()
    for path in [*(venv / "bin").iterdir(), venv / "pyvenv.cfg"]:
        if path.is_symlink() or not path.is_file():
            continue
        body = path.read_bytes()
        if here in body[:4096] or path.name.startswith("activate"):
            path.write_bytes(body.replace(here, seen.encode()))


def _write(path: Path, body: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(body)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _sync_folder(path.parent)


def _sync_folder(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- switching

def _link(path: Path, target: str) -> None:
    """Point `path` at `target` in one step: a new link renamed over the old one."""
    tmp = path.with_name(f".{path.name}.new")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    os.symlink(target, tmp)
    os.replace(tmp, path)
    _sync_folder(path.parent)


def switch(layout: Layout, name: str) -> str | None:
    """Make version `name` current and the one it replaces previous; returns that one."""
    old = layout.active()
    if old is not None and old != name:
        _link(layout.previous, f"versions/{old}")
    _link(layout.current, f"versions/{name}")
    return old if old != name else layout.before()


def restore(layout: Layout, current: str | None, previous: str | None) -> None:
    """Put `current` and `previous` back as they were (a rollback)."""
    if previous is not None:
        _link(layout.previous, f"versions/{previous}")
    if current is not None:
        _link(layout.current, f"versions/{current}")


def link_edge(layout: Layout) -> str:
    """`<bin_dir>/edge` -> `<prefix>/current/bin/edge`; refuses to replace a file that is not a
    link (an `edge` installed some other way)."""
    link, target = layout.edge_link, f"{layout.prefix.rstrip('/')}/current/bin/edge"
    if link.is_symlink():
        if os.readlink(link) == target:
            return f"{layout.bin_dir}/edge"
    elif link.exists():
        raise InstallError(f"{link} exists and is not a link to {target} (an edge installed another way?): "
                           f"move it away, then run this again")
    link.parent.mkdir(parents=True, exist_ok=True)
    _link(link, target)
    return f"{layout.bin_dir}/edge"


# ---------------------------------------------------------------- install.py

def main(argv: list[str] | None = None) -> int:
    """`python3 install.py`: the first install on a blank card, from the unpacked bundle."""
    parser = argparse.ArgumentParser(
        prog="install.py", description=f"Install {PROJECT} from this unpacked bundle, with no network.",
        epilog="example: sudo python3 fabrique-edge-0.1.0-aarch64/install.py")
    parser.add_argument("--prefix", default=PREFIX, help=f"where versions live (default {PREFIX})")
    parser.add_argument("--bin-dir", default=BIN_DIR, help=f"where the `edge` link goes (default {BIN_DIR})")
    parser.add_argument("--root", default="/", help="write everything inside this image folder")
    parser.add_argument("--no-system-site-packages", action="store_true",
                        help="do not let the venv see apt's Python packages (python3-picamera2, python3-lgpio)")
    args = parser.parse_args(argv)
    folder = Path(__file__).resolve().parent
    layout = Layout(args.prefix, args.bin_dir, args.root)
    try:
        manifest, raw = read_manifest(folder)
        print(f"{PROJECT} {manifest['version']} for {manifest.get('machine')} / Python {manifest.get('python')}, "
              f"made {manifest.get('created')}, signed by key {manifest.get('signer')}\n"
              f"manifest sha256 {hashlib.sha256(raw).hexdigest()}")
        problem = check_machine(manifest)
        if problem:
            print(f"install.py: {problem}: nothing installed", file=sys.stderr)
            return 1
        problems = check_files(folder, manifest, lambda text: print(f"[1/3] {text}", flush=True))
        if problems:
            for line in problems:
                print(f"  {line}", file=sys.stderr)
            print("install.py: the bundle's files are not those its manifest lists: nothing installed; copy the "
                  "bundle again", file=sys.stderr)
            return 1
        name, made = install_version(folder, manifest, raw, layout,
                                     system_site_packages=not args.no_system_site_packages,
                                     say=lambda text: print(f"[2/3] {text}", flush=True))
        if not made:
            print(f"[2/3] {layout.seen_by_node(name)} is already installed: not installed again")
        had = layout.active()
        switch(layout, name)
        edge = link_edge(layout)
    except InstallError as exc:
        print(f"install.py: {exc}", file=sys.stderr)
        return 1
    except (KeyError, TypeError, ValueError) as exc:
        print(f"install.py: {folder / MANIFEST} is not a usable manifest ({exc!r}): nothing installed",
              file=sys.stderr)
        return 1
    except PermissionError as exc:
        print(f"install.py: permission denied on {exc.filename}: run it as root (sudo python3 {sys.argv[0]})",
              file=sys.stderr)
        return 2
    print(f"[3/3] {args.prefix}/current -> versions/{name}; {edge} -> {args.prefix}/current/bin/edge")
    if had and had != name:
        print(f"the version before ({had}) is kept as {args.prefix}/previous; a node already running keeps "
              f"running it until restarted (to update a node, use `edge bundle apply`: it waits for the job, "
              f"restarts the node and checks it)")
    print(f"\n{PROJECT} {manifest['version']} is installed. Next (docs/bundles.md):\n"
          f"  1. compare this bundle's manifest sha256 with the one `edge bundle verify` printed on the\n"
          f"     laptop that made it: {hashlib.sha256(raw).hexdigest()}\n"
          f"  2. make this Pi the station's node (service user, files, unit; docs/flashing.md, step 5):\n"
          f"     sudo {edge} provision --station STATION_FILE --secret line.secret\n"
          f"The docs are installed in {args.prefix}/current/share/{PROJECT}/docs/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
