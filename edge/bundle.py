"""Signed offline bundles: made on a connected machine, carried on a USB stick, checked and
installed on nodes that have no network.

A bundle is one uncompressed tar, `fabrique-edge-<version>-<machine>.bundle.tar`:

    fabrique-edge-0.1.0-aarch64/
        manifest.json   format, project, version, python, machine, platform tags, created, the
                        signer's public key, and every other file with its sha256 and size
        manifest.sig    base64 Ed25519 signature of manifest.json's exact bytes
        install.py      the first install on a blank card (edge/install.py, standard library only)
        wheels/         the project's wheel, every dependency's, and pip's

Trust: a bundle is good when a key listed under `[updates.keys]` in the line file signed its
manifest and every file in the tar is one the manifest lists, with that size and sha256 (and
nothing else is in it). `verify` reads the tar without writing anything; `unpack` writes only a
bundle already verified, checking each file again as it writes it. Applying a bundle to a
running node is edge.update.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edge import install
from edge.install import FORMAT, MANIFEST, PROJECT, SIGNATURE, WHEELS

Say = Callable[[str], None]

PI_MACHINE = "aarch64"
# Raspberry Pi OS Bookworm 64-bit has glibc 2.36: every manylinux_2_x up to 2_36 runs there
# (pip takes the list as given; it does not widen manylinux_2_36 to the older ones by itself).
PI_PLATFORMS = (*(f"manylinux_2_{minor}_{PI_MACHINE}" for minor in range(36, 16, -1)),
                f"manylinux2014_{PI_MACHINE}", f"linux_{PI_MACHINE}")
PURE = ("none-any",)
MAX_MANIFEST = 4 << 20
VERSION_RE = re.compile(r"^[0-9A-Za-z][0-9A-Za-z.+_-]{0,63}$")
PATH_RE = re.compile(r"^(install\.py|wheels/[A-Za-z0-9][A-Za-z0-9._+-]*\.whl)$")
SOURCE_SKIP = (".git", ".venv", "venv", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
               ".ruff_cache", ".hypothesis", "demo-data", "*.bundle.tar")


class BundleError(Exception):
    """A bundle that cannot be made, read or trusted; the message says why."""


@dataclass(frozen=True)
class Target:
    """What a bundle is made for: `pi` (Raspberry Pi OS 64-bit) or `native` (this machine)."""

    platform: str
    python: str
    machine: str

    @classmethod
    def of(cls, name: str, python: str) -> Target:
        if not re.fullmatch(r"3\.\d{1,2}", python):
            raise BundleError(f"--python {python}: give a Python version such as 3.11")
        if name == "pi":
            return cls("pi", python, PI_MACHINE)
        here = f"{sys.version_info[0]}.{sys.version_info[1]}"
        if name != "native":
            raise BundleError(f"--platform {name}: pi or native")
        if python != here:
            raise BundleError(f"--platform native makes wheels for this Python ({here}), not {python}: "
                              f"run it with Python {python}, or use --platform pi")
        return cls("native", python, platform.machine())

    def pip_download_args(self) -> list[str]:
        """What tells `pip download` to fetch wheels for the Pi instead of this machine."""
        version = self.python.replace(".", "")
        return ["--only-binary=:all:", *(f"--platform={tag}" for tag in PI_PLATFORMS),
                f"--python-version={self.python}", "--implementation=cp", f"--abi=cp{version}"]


# ---------------------------------------------------------------- making a bundle

def create(source: Path, key_pem: bytes, out: Path, target: Target, say: Say = print) -> Path:
    """Build the project's wheel from `source`, gather every dependency for `target`, sign,
    and write one tar; returns its path. Needs the package index (pip's own configuration)."""
    from edge.orders import private_key_from_pem, public_key_b64

    try:
        key = private_key_from_pem(key_pem)
    except (ValueError, TypeError) as exc:
        raise BundleError(f"the signing key is not an unencrypted Ed25519 private key (PEM): {exc}") from None
    if not (source / "setup.py").is_file() or not (source / "edge" / "__init__.py").is_file():
        raise BundleError(f"{source} is not a {PROJECT} source tree (no setup.py and edge/)")
    with tempfile.TemporaryDirectory(prefix="fabrique-edge-bundle-") as tmp:
        work = Path(tmp)
        say(f"[1/4] building the {PROJECT} wheel from {source}")
        project = _build_project_wheel(source, work)
        version = _wheel_parts(project.name)[1].replace("_", "-")
        top = f"{PROJECT}-{version}-{target.machine}"
        folder = work / top
        wheels = folder / WHEELS
        wheels.mkdir(parents=True)
        shutil.copy2(project, wheels / project.name)
        say(f"[2/4] gathering the dependencies for {target.machine} / Python {target.python} "
            f"({'downloaded' if target.platform == 'pi' else 'built or downloaded for this machine'})")
        if target.platform == "pi":
            _download_for_pi(target, project, wheels, work, say)
        else:
            _pip([sys.executable, "-m", "pip", "wheel", "--wheel-dir", str(wheels), str(project), "pip"],
                 "pip wheel", say)
        problems = _wrong_wheels(wheels, target)
        if problems:
            raise BundleError("the wheels gathered do not all fit the target:\n  " + "\n  ".join(problems))
        shutil.copy2(install.__file__, folder / "install.py")
        (folder / "install.py").chmod(0o755)
        say(f"[3/4] hashing {len(list(wheels.iterdir()))} wheels and signing the manifest")
        manifest = _manifest(folder, version, target, public_key_b64(key))
        (folder / MANIFEST).write_bytes(manifest)
        (folder / SIGNATURE).write_bytes(base64.b64encode(key.sign(manifest)) + b"\n")
        path = out / f"{top}.bundle.tar" if out.is_dir() else out
        say(f"[4/4] writing {path}")
        _write_tar(folder, path)
    return path


def _build_project_wheel(source: Path, work: Path) -> Path:
    """`pip wheel --no-deps` of a clean copy of the tree (a stale build/ folder in a checkout
    would put modules deleted since into the wheel)."""
    copy = work / "source"
    shutil.copytree(source, copy, ignore=shutil.ignore_patterns(*SOURCE_SKIP), symlinks=True)
    built = work / "project"
    _pip([sys.executable, "-m", "pip", "wheel", "--no-deps", "--wheel-dir", str(built), str(copy)],
         "building the project's wheel", lambda _line: None)
    found = sorted(built.glob("fabrique_edge-*.whl"))
    if len(found) != 1:
        raise BundleError(f"pip wheel made {len(found)} fabrique-edge wheels")
    return found[0]


def _download_for_pi(target: Target, project: Path, wheels: Path, work: Path, say: Say) -> None:
    """`pip download` of wheels for the Pi; a dependency that ships only an sdist is built
    into a wheel here, which must come out pure Python (`none-any`), and the download tried again."""
    built = work / "built-here"
    built.mkdir()
    tried: set[str] = set()
    while True:
        argv = [sys.executable, "-m", "pip", "download", *target.pip_download_args(), "--find-links", str(built),
                "--dest", str(wheels), str(project), "pip"]
        ok, tail = _pip(argv, "pip download", say, check=False)
        if ok:
            break
        missing = re.search(r"No matching distribution found for ([A-Za-z0-9][A-Za-z0-9._-]*)([^\s]*)", tail)
        if missing is None or missing.group(1).lower() in tried:
            raise BundleError("pip download failed:\n" + tail)
        name, spec = missing.group(1), missing.group(2)
        tried.add(name.lower())
        say(f"  {name} has no wheel for {target.machine} / Python {target.python}: building it here "
            f"from its source (it must be pure Python)")
        _pip([sys.executable, "-m", "pip", "wheel", "--no-deps", f"--no-binary={name}", "--wheel-dir", str(built),
              f"{name}{spec}"], f"building {name}", say)
        for wheel in built.glob("*.whl"):
            if "-".join(_wheel_parts(wheel.name)[3:5]) not in PURE:
                raise BundleError(f"{name} ships no wheel for {target.machine} and is not pure Python "
                                  f"({wheel.name}): it cannot go in a Pi bundle; install it from apt instead")
    for wheel in built.glob("*.whl"):
        if not (wheels / wheel.name).exists():
            shutil.copy2(wheel, wheels / wheel.name)


def _pip(argv: list[str], what: str, say: Say, check: bool = True) -> tuple[bool, str]:
    """Run pip, showing its lines as they come (progress); (ok, its last lines)."""
    tail: list[str] = []
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    except OSError as exc:
        raise BundleError(f"{what}: {exc}") from None
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip()
        if line:
            say(f"  {line}")
            tail = (tail + [line])[-40:]
    ok = proc.wait() == 0
    if check and not ok:
        raise BundleError(f"{what} failed (exit {proc.returncode}):\n" + "\n".join(tail[-15:]))
    return ok, "\n".join(tail)


def _wheel_parts(filename: str) -> list[str]:
    """`name-version[-build]-python-abi-platform.whl` -> [name, version, python, abi, platform]."""
    parts = filename[:-4].split("-")
    if len(parts) == 6:
        del parts[2]
    if len(parts) != 5:
        raise BundleError(f"{filename}: not a wheel file name")
    return parts


def _wrong_wheels(wheels: Path, target: Target) -> list[str]:
    problems = []
    names = sorted(p.name for p in wheels.iterdir())
    for needed in ("fabrique_edge-", "pip-"):
        if not any(n.startswith(needed) for n in names):
            problems.append(f"no {needed.rstrip('-')} wheel")
    for name in names:
        if not name.endswith(".whl"):
            problems.append(f"{name}: not a wheel (an sdist that was not built)")
            continue
        if target.platform != "pi":
            continue
        _, _, python, abi, plat = _wheel_parts(name)
        platforms = set(plat.split("."))
        if "any" not in platforms and not platforms & set(PI_PLATFORMS):
            problems.append(f"{name}: not for {target.machine}")
        elif not set(abi.split(".")) & {"none", "abi3", f"cp{target.python.replace('.', '')}"}:
            problems.append(f"{name}: not for Python {target.python}")
    return problems


def _manifest(folder: Path, version: str, target: Target, signer: str) -> bytes:
    files = [{"path": "install.py", "size": (folder / "install.py").stat().st_size,
              "sha256": install.sha256_of(folder / "install.py")}]
    tags: set[str] = set()
    for wheel in sorted((folder / WHEELS).iterdir()):
        files.append({"path": f"{WHEELS}/{wheel.name}", "size": wheel.stat().st_size,
                      "sha256": install.sha256_of(wheel)})
        tags.update(_wheel_parts(wheel.name)[4].split("."))
    manifest = {
        "format": FORMAT, "project": PROJECT, "version": version, "python": target.python,
        "platform": target.platform, "machine": target.machine, "platform_tags": sorted(tags),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "signer": signer, "files": files,
    }
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def _write_tar(folder: Path, path: Path) -> None:
    """The tar, written beside `path` and renamed over it when whole."""
    def owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        info.mode = 0o755 if info.isdir() or info.name.endswith("install.py") else 0o644
        return info

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(folder, folder.name, recursive=False, filter=owned_by_root)
        for name in (MANIFEST, SIGNATURE, "install.py", WHEELS):
            tar.add(folder / name, f"{folder.name}/{name}", recursive=False, filter=owned_by_root)
        for wheel in sorted((folder / WHEELS).iterdir()):
            tar.add(wheel, f"{folder.name}/{WHEELS}/{wheel.name}", filter=owned_by_root)
    tmp.replace(path)


# ---------------------------------------------------------------- reading and checking one

@dataclass(frozen=True)
class Bundle:
    """A bundle's tar, its manifest and signature, read but not yet trusted."""

    path: Path
    top: str
    manifest: dict[str, Any]
    manifest_bytes: bytes
    signature: bytes

    @property
    def version(self) -> str:
        return str(self.manifest["version"])

    @property
    def name(self) -> str:
        """Its version folder on a node: `0.1.0-3f9a0c2e`."""
        return install.version_name(self.manifest, self.manifest_bytes)

    @property
    def signer(self) -> str:
        return str(self.manifest["signer"])

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return {f["path"]: f for f in self.manifest["files"]}

    def wheels(self) -> list[str]:
        """`name version` of each wheel it carries."""
        return [" ".join(_wheel_parts(Path(p).name)[:2]) for p in self.files if p.startswith(f"{WHEELS}/")]


def read(path: Path) -> Bundle:
    """Open a bundle and read its manifest and signature; BundleError if it is not one."""
    try:
        with tarfile.open(path, "r:") as tar:
            members = tar.getmembers()
            top = _layout_of(members, path)
            manifest_bytes = _member_bytes(tar, f"{top}/{MANIFEST}", MAX_MANIFEST)
            signature_text = _member_bytes(tar, f"{top}/{SIGNATURE}", 1024)
    except FileNotFoundError:
        raise BundleError(f"{path}: no such file") from None
    except (tarfile.TarError, EOFError) as exc:
        raise BundleError(f"{path}: not a bundle (not a readable tar: {exc})") from None
    except OSError as exc:
        raise BundleError(f"{path}: {exc.strerror or exc}") from None
    try:
        manifest = json.loads(manifest_bytes)
        signature = base64.b64decode(signature_text.strip(), validate=True)
    except (ValueError, binascii.Error) as exc:
        raise BundleError(f"{path}: its {MANIFEST} or {SIGNATURE} cannot be read: {exc}") from None
    _check_manifest(manifest, path)
    return Bundle(path, top, manifest, manifest_bytes, signature)


def _layout_of(members: list[tarfile.TarInfo], path: Path) -> str:
    tops = {m.name.split("/", 1)[0] for m in members}
    if len(tops) != 1:
        raise BundleError(f"{path}: not a bundle (a bundle holds one folder, this holds {len(tops)} entries)")
    top = tops.pop()
    seen: set[str] = set()
    for m in members:
        if m.name.startswith("/") or ".." in m.name.split("/") or not (m.isfile() or m.isdir()):
            raise BundleError(f"{path}: {m.name!r} is not a plain file or folder of the bundle: refused")
        if m.isfile() and m.name in seen:
            raise BundleError(f"{path}: {m.name} is in the tar twice: refused")
        seen.add(m.name)
    return top


def _member_bytes(tar: tarfile.TarFile, name: str, limit: int) -> bytes:
    try:
        member = tar.getmember(name)
    except KeyError:
        raise BundleError(f"{tar.name}: not a bundle ({name} is missing)") from None
    if not member.isfile() or member.size > limit:
        raise BundleError(f"{tar.name}: {name} is not a file of at most {limit} bytes")
    f = tar.extractfile(member)
    assert f is not None
    return f.read()


def _check_manifest(manifest: Any, path: Path) -> None:
    def bad(why: str) -> BundleError:
        return BundleError(f"{path}: {MANIFEST} {why}")

    if not isinstance(manifest, dict) or manifest.get("project") != PROJECT:
        raise bad(f"is not the manifest of a {PROJECT} bundle")
    if manifest.get("format") != FORMAT:
        raise bad(f"has format {manifest.get('format')!r}; this edge reads format {FORMAT}")
    if not isinstance(manifest.get("version"), str) or not VERSION_RE.match(manifest["version"]):
        raise bad(f"has no usable version ({manifest.get('version')!r})")
    for key in ("python", "machine", "signer", "created"):
        if not isinstance(manifest.get(key), str):
            raise bad(f"has no {key}")
    files = manifest.get("files")
    if not isinstance(files, list) or not files:
        raise bad("lists no files")
    for entry in files:
        if not (isinstance(entry, dict) and isinstance(entry.get("path"), str) and PATH_RE.match(entry["path"])
                and isinstance(entry.get("size"), int) and isinstance(entry.get("sha256"), str)
                and re.fullmatch(r"[0-9a-f]{64}", entry["sha256"])):
            raise bad(f"has a file entry that is not a path, size and sha256: {entry!r:.120}")
    if len({f["path"] for f in files}) != len(files):
        raise bad("lists a file twice")


def public_key(text: str) -> bytes:
    """A base64 Ed25519 public key (as `[updates.keys]` lists it) -> its 32 bytes."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (ValueError, binascii.Error):
        raise BundleError(f"{text!r:.60} is not a base64 public key") from None
    if len(raw) != 32:
        raise BundleError(f"{text!r:.60} is {len(raw)} bytes; an Ed25519 public key is 32")
    return raw


def check_signature(bundle: Bundle, trusted: dict[str, bytes], source: str) -> str:
    """The name of the trusted key that signed the manifest; BundleError saying which key
    signed it and which keys `source` trusts, if none of them did."""
    for name, key in trusted.items():
        try:
            Ed25519PublicKey.from_public_bytes(key).verify(bundle.signature, bundle.manifest_bytes)
        except (InvalidSignature, ValueError):
            continue
        return name
    if not trusted:
        raise BundleError(f"{bundle.path}: signed by key {bundle.signer}, but {source} lists no key, so no bundle "
                          f"is trusted: if that key is yours, list it there (e.g. tech-2026 = \"{bundle.signer}\")")
    listed = ", ".join(f"{n} = {base64.b64encode(k).decode()}" for n, k in trusted.items())
    claimed = next((n for n, k in trusted.items() if base64.b64encode(k).decode() == bundle.signer), None)
    if claimed is not None:
        raise BundleError(f"{bundle.path}: {MANIFEST} does not match its signature: it was changed after "
                          f"{claimed} signed it (or the signature was): refused")
    raise BundleError(f"{bundle.path}: signed by key {bundle.signer}, which is not trusted: {source} "
                      f"lists {listed}")


def _files(bundle: Bundle) -> Iterator[tuple[str, IO[bytes], dict[str, Any] | None]]:
    """(path in the bundle, its content, its manifest entry) for every file but the manifest's own."""
    skip = {f"{bundle.top}/{MANIFEST}", f"{bundle.top}/{SIGNATURE}"}
    listed = bundle.files
    with tarfile.open(bundle.path, "r:") as tar:
        for member in tar:
            if not member.isfile() or member.name in skip:
                continue
            if not member.name.startswith(f"{bundle.top}/"):
                raise BundleError(f"{bundle.path}: {member.name} is outside the bundle's folder: refused")
            inner = member.name[len(bundle.top) + 1:]
            f = tar.extractfile(member)
            assert f is not None
            yield inner, f, listed.get(inner)


def check_files(bundle: Bundle, say: Say = print, write: Path | None = None) -> None:
    """Every file against the manifest: its size and sha256, none missing, none extra.
    BundleError listing every difference. `write`: also unpack into that folder."""
    problems: list[str] = []
    seen: set[str] = set()
    total = sum(f["size"] for f in bundle.manifest["files"])
    say(f"checking {len(bundle.files)} files ({total / 1e6:.0f} MB) against the signed manifest")
    for inner, f, entry in _files(bundle):
        if entry is None:
            problems.append(f"{inner}: not in the manifest")
            continue
        seen.add(inner)
        digest, size = hashlib.sha256(), 0
        out = None
        if write is not None:
            (write / inner).parent.mkdir(parents=True, exist_ok=True)
            out = open(write / inner, "wb")  # noqa: SIM115 (closed below, after the last block)
        try:
            for block in iter(lambda f=f: f.read(1 << 20), b""):
                digest.update(block)
                size += len(block)
                if out is not None:
                    out.write(block)
        finally:
            if out is not None:
                out.close()
        if size != entry["size"]:
            problems.append(f"{inner}: {size} bytes, the manifest says {entry['size']}")
        elif digest.hexdigest() != entry["sha256"]:
            problems.append(f"{inner}: its sha256 differs from the manifest's (changed after signing, or damaged)")
    problems += [f"{p}: listed in the manifest, missing from the tar" for p in bundle.files if p not in seen]
    if problems:
        raise BundleError(f"{bundle.path}: the files are not those that were signed: refused\n  "
                          + "\n  ".join(problems))


def unpack(bundle: Bundle, into: Path, say: Say = print) -> Path:
    """Write a verified bundle's files under `into`, checking each again as it is written (the
    file on the stick may have changed since); returns the unpacked folder. BundleError if a
    file differs (the caller removes `into`)."""
    folder = into / bundle.top
    folder.mkdir(parents=True)
    (folder / MANIFEST).write_bytes(bundle.manifest_bytes)
    (folder / SIGNATURE).write_bytes(base64.b64encode(bundle.signature) + b"\n")
    check_files(bundle, say, write=folder)
    return folder


def describe(bundle: Bundle, signed_by: str | None) -> list[str]:
    """What a bundle holds, for a person."""
    m = bundle.manifest
    total = sum(f["size"] for f in m["files"])
    lines = [f"{PROJECT} {m['version']} ({bundle.name}) for {m['machine']} / Python {m['python']} "
             f"({m.get('platform')}), made {m['created']}",
             f"signed by {signed_by + ' = ' if signed_by else 'key '}{bundle.signer}",
             f"manifest sha256 {hashlib.sha256(bundle.manifest_bytes).hexdigest()} (install.py prints it too)",
             f"{len(m['files'])} files, {total / 1e6:.1f} MB; platform tags: {', '.join(m.get('platform_tags', []))}",
             "wheels:"]
    return lines + [f"  {w}" for w in sorted(bundle.wheels(), key=str.lower)]
