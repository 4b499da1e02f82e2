"""Signed offline bundles with real parts: bundles made by `edge bundle create` (this machine's
wheels: pip's cache makes it quick), the first install by the bundle's own install.py with no
network, and updates of a node really running (`edge run` on a real mosquitto, answering on its
console socket), restarted by a restart command as systemd would. The bundles and the node are
made once for the module: building one costs seconds."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from trailer import ROOT, run_edge

from edge.bundle import SOURCE_SKIP
from edge.config import ConfigError, load_line
from edge.orders import new_private_key, private_key_pem, public_key_b64
from edge.sim.line import SimBroker, password_of, sim_line_file, station_text, write_sim_key
from edge.update import ask_status

NODE = "intake-1"
TRUSTED = "tech-test"

pytestmark = pytest.mark.timeout(420)


# ---------------------------------------------------------------- helpers

@dataclass(frozen=True)
class Keys:
    trusted: Path  # private key files
    stranger: Path
    trusted_public: str


@dataclass(frozen=True)
class Site:
    """A node's files, as on a Pi, under one test folder."""

    prefix: Path
    bin_dir: Path
    station: Path
    line: Path
    console: Path
    restart: str  # the restart command
    pidfile: Path
    restarts: Path  # one line per restart: the version `current` pointed at
    log: Path

    @property
    def current(self) -> Path:
        return self.prefix / "current"

    def link(self, name: str) -> str:
        return os.readlink(self.prefix / name)

    def pid(self) -> int:
        return int(self.pidfile.read_text())

    def status(self) -> dict | None:
        return ask_status(self.console)


def copy_source(dest: Path, version: str, cannot_start: bool = False, needs: str | None = None) -> Path:
    """A copy of this source tree at another version; `cannot_start`: its `edge run` exits 1 at
    once; `needs`: one more requirement in install_requires."""
    shutil.copytree(ROOT, dest, ignore=shutil.ignore_patterns(*SOURCE_SKIP, "tests", "bench"))
    edit(dest / "setup.py", 'version="0.1.0"', f'version="{version}"')
    edit(dest / "edge" / "__init__.py", '__version__ = "0.1.0"', f'__version__ = "{version}"')
    if cannot_start:
        edit(dest / "edge" / "commands" / "run.py", "def run(args: argparse.Namespace) -> int:\n",
             "def run(args: argparse.Namespace) -> int:\n"
             "    print('this version cannot start', file=sys.stderr)\n    return 1\n")
    if needs:
        edit(dest / "setup.py", "install_requires=[\n", f'install_requires=[\n        "{needs}",\n')
    return dest


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} no longer holds {old!r}: update the test's copy"
    path.write_text(text.replace(old, new, 1))


def create(source: Path, key: Path, out: Path, *more: str, env: dict[str, str] | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    proc = run_edge("bundle", "create", "--key", str(key), "--out", f"{out}/", "--source", str(source), *more,
                    env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr
    (made,) = out.glob("*.bundle.tar")
    return made


def manifest_of(bundle: Path) -> dict:
    with tarfile.open(bundle) as tar:
        member = next(m for m in tar if m.name.endswith("/manifest.json"))
        return json.loads(tar.extractfile(member).read())


def rewrite(bundle: Path, dest: Path, change) -> Path:
    """A copy of a bundle whose members pass through `change(name, bytes) -> bytes`."""
    with tarfile.open(bundle) as src, tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as out:
        for member in src:
            body = src.extractfile(member).read() if member.isfile() else None
            if body is not None:
                body = change(member.name, body)
                member.size = len(body)
            out.addfile(member, io.BytesIO(body) if body is not None else None)
    return dest


def flip_a_byte_of_a_wheel(bundle: Path, dest: Path) -> str:
    """A copy of a bundle with one byte changed in the middle of the project's wheel; its name."""
    shutil.copy(bundle, dest)
    with tarfile.open(dest) as tar:
        member = next(m for m in tar if re.search(r"/wheels/fabrique_edge-.*\.whl$", m.name))
    with open(dest, "r+b") as f:
        f.seek(member.offset_data + member.size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    return member.name.split("/", 1)[1]


def snapshot(folder: Path) -> dict[str, tuple]:
    """Every file, folder and link under `folder`: what `nothing on disk changes` compares."""
    seen: dict[str, tuple] = {}
    for top, dirs, files in os.walk(folder):
        for name in dirs + files:
            path = Path(top) / name
            st = path.lstat()
            seen[str(path.relative_to(folder))] = (
                ("link", os.readlink(path)) if path.is_symlink() else (st.st_mode, st.st_size, st.st_mtime_ns))
    return seen


def offline() -> list[str]:
    """A command prefix that runs a program with no network at all (a new network namespace)."""
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        if shutil.which("unshare") and subprocess.run([*prefix, "true"], capture_output=True).returncode == 0:
            return prefix
    return []


def wait_for(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def apply(site: Site, bundle: Path, *more: str) -> subprocess.CompletedProcess[str]:
    proc = run_edge("bundle", "apply", str(bundle), "--config", str(site.station), "--prefix", str(site.prefix),
                    "--bin-dir", str(site.bin_dir), "--restart-command", site.restart, *more, timeout=300)
    print(proc.stdout, proc.stderr, sep="\n")  # shown when a test fails
    return proc


RESTART_SCRIPT = '''\
"""The test's `systemctl restart fabrique-edge.service`: stop the node the pid file names, start
<prefix>/current/bin/edge run in the background, as systemd would."""
import os, signal, subprocess, sys, time
from pathlib import Path

pidfile, current, station, log, restarts = (Path(a) for a in sys.argv[1:6])


def alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


if pidfile.exists():
    pid = int(pidfile.read_text())
    if alive(pid):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + 30
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if alive(pid):
        os.kill(pid, signal.SIGKILL)
with open(restarts, "a") as f:
    f.write(os.readlink(current) + "\\n")
with open(log, "ab") as out:
    node = subprocess.Popen([str(current / "bin" / "edge"), "run", "--config", str(station), "--log-format", "text"],
                            stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                            env={**os.environ, "GPIOZERO_PIN_FACTORY": "mock"})
pidfile.write_text(str(node.pid))
'''


# ---------------------------------------------------------------- the module's bundles and node

@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("bundle")


@pytest.fixture(scope="module")
def keys(work: Path) -> Keys:
    """The workshop's update key (made as the docs say), and a stranger's."""
    made = run_edge("bundle", "keygen", str(work / "trusted.pem"), "--name", TRUSTED)
    assert made.returncode == 0, made.stderr
    line = made.stdout.splitlines()[-1]
    assert line.startswith(f'{TRUSTED} = "') and oct((work / "trusted.pem").stat().st_mode & 0o777) == "0o600"
    (work / "stranger.pem").write_bytes(private_key_pem(new_private_key()))
    return Keys(work / "trusted.pem", work / "stranger.pem", line.split('"')[1])


@pytest.fixture(scope="module")
def bundle_010(work: Path, keys: Keys) -> Path:
    """This source tree (0.1.0), for this machine."""
    return create(ROOT, keys.trusted, work / "out-010", "--platform", "native")


@pytest.fixture(scope="module")
def bundle_011(work: Path, keys: Keys) -> Path:
    """The next version: a copy of the tree at 0.1.1."""
    return create(copy_source(work / "src-011", "0.1.1"), keys.trusted, work / "out-011", "--platform", "native")


@pytest.fixture(scope="module")
def bundle_broken(work: Path, keys: Keys) -> Path:
    """0.1.2, whose `edge run` exits 1 at start (its --version and check-config work)."""
    source = copy_source(work / "src-012", "0.1.2", cannot_start=True)
    return create(source, keys.trusted, work / "out-012", "--platform", "native")


@pytest.fixture(scope="module")
def broker(work: Path) -> Iterator[SimBroker]:
    b = SimBroker(work / "broker", users={NODE: password_of(NODE)}).start()
    yield b
    b.kill()


@pytest.fixture(scope="module")
def site(work: Path, keys: Keys, broker: SimBroker) -> Iterator[Site]:
    """A node's station and line files (the line trusts `keys.trusted` for updates), and where
    its versions go; the node is not installed yet."""
    home = work / "node"
    home.mkdir()
    line = sim_line_file(home / "line.toml", [NODE])
    line.write_text(line.read_text() + f'\n[updates.keys]\n{TRUSTED} = "{keys.trusted_public}"\n')
    password = home / "mqtt.password"
    password.write_text(password_of(NODE) + "\n")
    password.chmod(0o600)
    console = home / "console.sock"
    text = station_text(NODE, "intake", home / "data", broker.port, password, line_file=line,
                        key_file=write_sim_key(home / "node.key", NODE))
    station = home / "station.toml"
    station.write_text(text.replace("stdin = true", f'socket = "{console}"'))
    script = home / "restart.py"
    script.write_text(RESTART_SCRIPT)
    prefix, pidfile, log, restarts = work / "opt" / "fabrique-edge", home / "node.pid", home / "node.log", home / "restarts"
    restart = f"{sys.executable} {script} {pidfile} {prefix / 'current'} {station} {log} {restarts}"
    s = Site(prefix, work / "usr-local-bin", station, line, console, restart, pidfile, restarts, log)
    yield s
    if pidfile.exists():
        with contextlib.suppress(ProcessLookupError):
            os.kill(s.pid(), signal.SIGKILL)


@pytest.fixture(scope="module")
def first_install(site: Site, bundle_010: Path, work: Path) -> subprocess.CompletedProcess[str]:
    """The blank card: the bundle unpacked from the stick, its install.py run with no network,
    no index (an unreachable one named) and no pip configuration of this machine."""
    stick = work / "stick"
    stick.mkdir()
    with tarfile.open(bundle_010) as tar:
        tar.extractall(stick, filter="data")
    (folder,) = stick.iterdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_INDEX_URL="http://127.0.0.1:9/simple", PIP_CONFIG_FILE=os.devnull)
    return subprocess.run([*offline(), sys.executable, str(folder / "install.py"), "--prefix", str(site.prefix),
                           "--bin-dir", str(site.bin_dir), "--no-system-site-packages"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=work)


@pytest.fixture(scope="module")
def running(site: Site, first_install) -> Site:
    """The installed node started, as the unit would, and answering on its console socket."""
    assert first_install.returncode == 0, first_install.stdout + first_install.stderr
    subprocess.run(site.restart.split(), check=True)
    wait_for(lambda: (site.status() or {}).get("version") == "0.1.0", 60, "the node to answer as 0.1.0")
    return site


@pytest.fixture(scope="module")
def updated(running: Site, bundle_011: Path) -> subprocess.CompletedProcess[str]:
    """0.1.1 applied to the running 0.1.0."""
    return apply(running, bundle_011, "--health-timeout", "60")


# ---------------------------------------------------------------- the first install

def test_first_install_from_the_bundle_needs_no_index_and_edge_runs(site, first_install, bundle_010):
    assert first_install.returncode == 0, first_install.stdout + first_install.stderr
    name = f"0.1.0-{manifest_sha(bundle_010)[:8]}"
    assert site.link("current") == f"versions/{name}"
    assert os.readlink(site.bin_dir / "edge") == f"{site.prefix}/current/bin/edge"
    version = subprocess.run([str(site.bin_dir / "edge"), "--version"], capture_output=True, text=True)
    assert version.stdout.strip() == "fabrique-edge 0.1.0"
    # every dependency came from the bundle's wheels (the venv sees no other site packages)
    out = first_install.stdout
    assert re.search(r"Processing \S*/wheels/numpy-", out) and "Downloading" not in out, out
    assert "Retrying" not in out and "Looking in indexes" not in out, out  # pip never asked an index
    venv = site.prefix / "versions" / name
    assert "include-system-site-packages = false" in (venv / "pyvenv.cfg").read_text()
    probe = subprocess.run([str(venv / "bin" / "python"), "-c", "import cv2, numpy, cryptography, edge.node"],
                           capture_output=True, text=True)
    assert probe.returncode == 0, probe.stderr
    assert (venv / "share" / "fabrique-edge" / "systemd" / "fabrique-edge.service").is_file()


def manifest_sha(bundle: Path) -> str:
    import hashlib

    with tarfile.open(bundle) as tar:
        member = next(m for m in tar if m.name.endswith("/manifest.json"))
        return hashlib.sha256(tar.extractfile(member).read()).hexdigest()


def test_install_py_refuses_a_changed_wheel_and_installs_nothing(bundle_010, work):
    stick = work / "stick-changed"
    stick.mkdir()
    with tarfile.open(bundle_010) as tar:
        tar.extractall(stick, filter="data")
    (folder,) = stick.iterdir()
    wheel = next((folder / "wheels").glob("pyserial-*.whl"))
    body = bytearray(wheel.read_bytes())
    body[len(body) // 2] ^= 0x01
    wheel.write_bytes(bytes(body))
    prefix = work / "never"
    proc = subprocess.run([sys.executable, str(folder / "install.py"), "--prefix", str(prefix), "--bin-dir",
                           str(work / "never-bin")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert f"wheels/{wheel.name}: its sha256 differs" in proc.stderr
    assert "nothing installed" in proc.stderr
    assert not prefix.exists() and not (work / "never-bin").exists()


# ---------------------------------------------------------------- verify

def test_a_good_bundle_verifies_against_the_line_files_update_keys(site, bundle_010):
    proc = run_edge("bundle", "verify", str(bundle_010), "--config", str(site.station))
    assert proc.returncode == 0, proc.stderr
    assert f"ok: signed by {TRUSTED} ([updates.keys] of {site.line})" in proc.stdout
    assert re.search(r"^fabrique-edge 0\.1\.0 \(0\.1\.0-[0-9a-f]{8}\) for \S+ / Python 3\.\d+", proc.stdout, re.M)
    assert re.search(r"^  numpy \d", proc.stdout, re.M)


def test_one_byte_changed_in_a_wheel_is_refused_naming_the_wheel(site, bundle_010, work):
    changed = work / "changed-wheel.bundle.tar"
    wheel = flip_a_byte_of_a_wheel(bundle_010, changed)
    proc = run_edge("bundle", "verify", str(changed), "--config", str(site.station))
    assert proc.returncode == 1
    assert f"{wheel}: its sha256 differs from the manifest's" in proc.stderr
    assert "refused" in proc.stderr and "ok:" not in proc.stdout


def test_a_manifest_changed_without_signing_again_is_refused(site, bundle_010, work):
    changed = rewrite(bundle_010, work / "changed-manifest.bundle.tar",
                      lambda name, body: body.replace(b'"version": "0.1.0"', b'"version": "0.1.9"')
                      if name.endswith("/manifest.json") else body)
    assert manifest_of(changed)["version"] == "0.1.9"
    proc = run_edge("bundle", "verify", str(changed), "--config", str(site.station))
    assert proc.returncode == 1
    assert f"manifest.json does not match its signature: it was changed after {TRUSTED} signed it" in proc.stderr


def test_a_bundle_signed_by_a_key_the_line_does_not_trust_is_refused_naming_both(site, pi_bundle, keys):
    stranger = manifest_of(pi_bundle)["signer"]
    proc = run_edge("bundle", "verify", str(pi_bundle), "--config", str(site.station))
    assert proc.returncode == 1
    assert f"signed by key {stranger}, which is not trusted" in proc.stderr
    assert f"[updates.keys] of {site.line} lists {TRUSTED} = {keys.trusted_public}" in proc.stderr


def test_a_trusted_key_can_be_given_on_the_command_line(pi_bundle, keys):
    proc = run_edge("bundle", "verify", str(pi_bundle), "--key", str(keys.stranger))
    assert proc.returncode == 0, proc.stderr
    assert "every file as signed" in proc.stdout


# ---------------------------------------------------------------- a bundle for the Pi

@pytest.fixture(scope="module")
def pure_sdist(work: Path) -> Path:
    """A pure-Python project that ships only an sdist (no wheel), in a folder of its own."""
    folder = work / "sdists"
    folder.mkdir()
    files = {
        "fabrique_pure_probe-0.1/pyproject.toml": '[build-system]\nrequires = ["setuptools>=64"]\n'
        'build-backend = "setuptools.build_meta"\n\n[project]\nname = "fabrique-pure-probe"\nversion = "0.1"\n',
        "fabrique_pure_probe-0.1/fabrique_pure_probe.py": "ANSWER = 42\n",
        "fabrique_pure_probe-0.1/PKG-INFO": "Metadata-Version: 2.1\nName: fabrique-pure-probe\nVersion: 0.1\n",
    }
    with tarfile.open(folder / "fabrique_pure_probe-0.1.tar.gz", "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return folder


@pytest.fixture(scope="module")
def pi_bundle(work: Path, keys: Keys, pure_sdist: Path) -> Path:
    """A bundle for Raspberry Pi OS 64-bit, signed by a key the node does not trust, of a tree
    that also needs a pure project published as an sdist only."""
    source = copy_source(work / "src-pi", "0.1.0", needs="fabrique-pure-probe")
    return create(source, keys.stranger, work / "out-pi", "--platform", "pi", "--python", "3.11",
                  env={"PIP_FIND_LINKS": str(pure_sdist)})


def test_a_pi_bundle_carries_wheels_for_aarch64_and_python_311_only(pi_bundle):
    manifest = manifest_of(pi_bundle)
    assert pi_bundle.name == "fabrique-edge-0.1.0-aarch64.bundle.tar"
    assert (manifest["machine"], manifest["python"], manifest["platform"]) == ("aarch64", "3.11", "pi")
    wheels = [Path(f["path"]).name for f in manifest["files"] if f["path"].startswith("wheels/")]
    for wheel in wheels:
        python, abi, plat = wheel[:-4].split("-")[-3:]
        assert plat == "any" or "aarch64" in plat, wheel
        assert abi in ("none", "abi3", "cp311") or python.startswith(("py3", "cp3")), wheel
    names = {w.split("-")[0].lower() for w in wheels}
    assert {"fabrique_edge", "pip", "numpy", "opencv_python_headless", "cryptography", "gpiozero"} <= names
    assert not names & {"picamera2", "lgpio"}  # the [pi] extra comes from apt
    assert "fabrique_pure_probe-0.1-py3-none-any.whl" in wheels  # built here from its sdist


# ---------------------------------------------------------------- updating a running node

def test_apply_switches_current_and_the_restarted_node_answers_as_the_new_version(updated, site, bundle_010):
    assert updated.returncode == 0, updated.stdout + updated.stderr
    assert re.fullmatch(r"versions/0\.1\.1-[0-9a-f]{8}", site.link("current"))
    assert site.link("previous") == f"versions/0.1.0-{manifest_sha(bundle_010)[:8]}"
    status = site.status()
    assert status is not None and status["version"] == "0.1.1" and "station" in status
    interpreter = Path(f"/proc/{site.pid()}/cmdline").read_bytes().split(b"\0")[0].decode()
    assert interpreter == f"{site.prefix}/{site.link('current')}/bin/python"  # the new venv runs the node
    assert "[4/6] asking the node" in updated.stdout and "fabrique-edge 0.1.1 runs" in updated.stdout
    edge = subprocess.run([str(site.bin_dir / "edge"), "--version"], capture_output=True, text=True)
    assert edge.stdout.strip() == "fabrique-edge 0.1.1"


def test_applying_the_same_bundle_again_changes_nothing_and_says_so(updated, site, bundle_011):
    pid, restarts = site.pid(), site.restarts.read_text()
    proc = apply(site, bundle_011)
    assert proc.returncode == 0, proc.stderr
    assert "is already installed and current: nothing to do" in proc.stdout
    assert site.pid() == pid and site.restarts.read_text() == restarts


def test_apply_waits_for_the_step_the_node_runs_and_switches_nothing_if_it_does_not_end(updated, site, bundle_010):
    from edge.sim.line import example_order

    order = example_order("BUNDLE-WAIT-1")
    launched = run_edge("console", "--socket", str(site.console), "-c", f"launch {order}")
    assert launched.returncode == 0, launched.stdout + launched.stderr
    started = run_edge("console", "--socket", str(site.console), "-c", "step BUNDLE-WAIT-1 started")
    assert started.returncode == 0, started.stdout + started.stderr
    wait_for(lambda: (site.status() or {}).get("job") == "BUNDLE-WAIT-1", 10, "the node to run the step")
    before, pid = snapshot(site.prefix), site.pid()
    try:
        proc = apply(site, bundle_010, "--wait-idle", "2")
    finally:
        run_edge("console", "--socket", str(site.console), "-c", "step BUNDLE-WAIT-1 done")
    assert proc.returncode == 1
    assert "already installed: not installed again" in proc.stdout  # 0.1.0 is the previous version
    assert "waiting for job BUNDLE-WAIT-1's intake step on intake-1 to end" in proc.stdout
    assert "the node still runs job BUNDLE-WAIT-1's intake step on intake-1 after 2 s: nothing switched" in proc.stderr
    assert snapshot(site.prefix) == before and site.pid() == pid


def test_a_tampered_bundle_is_refused_and_nothing_on_the_node_changes(updated, site, bundle_011, work):
    changed = work / "apply-changed.bundle.tar"
    wheel = flip_a_byte_of_a_wheel(bundle_011, changed)
    before, pid = snapshot(site.prefix), site.pid()
    proc = apply(site, changed)
    assert proc.returncode == 1
    assert f"{wheel}: its sha256 differs" in proc.stderr and "nothing changed on this node" in proc.stderr
    assert snapshot(site.prefix) == before and site.pid() == pid


def test_a_bundle_from_an_untrusted_key_is_not_applied(updated, site, pi_bundle):
    before = snapshot(site.prefix)
    proc = apply(site, pi_bundle)
    assert proc.returncode == 1
    assert "which is not trusted" in proc.stderr and "nothing changed on this node" in proc.stderr
    assert snapshot(site.prefix) == before


def test_a_version_that_cannot_start_is_rolled_back_by_itself(updated, site, bundle_broken):
    good, old_previous, old_pid = site.link("current"), site.link("previous"), site.pid()
    proc = apply(site, bundle_broken, "--health-timeout", "15")
    assert proc.returncode == 1, proc.stdout
    assert re.search(rf"rolled back to {Path(good).name} and it runs again: the new version did not answer on "
                     rf"its console socket \S+ within 15 s", proc.stderr), proc.stderr
    assert site.link("current") == good and site.link("previous") == old_previous
    restarts = site.restarts.read_text().splitlines()
    assert re.fullmatch(r"versions/0\.1\.2-[0-9a-f]{8}", restarts[-2]) and restarts[-1] == good
    status = site.status()
    assert status is not None and status["version"] == "0.1.1" and site.pid() != old_pid
    assert "this version cannot start" in site.log.read_text()


def test_apply_inside_an_image_folder_links_as_the_booted_node_will_see_it(site, bundle_010, work):
    image = work / "image"
    restarts = site.restarts.read_text() if site.restarts.exists() else ""
    proc = run_edge("bundle", "apply", str(bundle_010), "--root", str(image), "--config", str(site.station),
                    "--restart-command", site.restart, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    name = f"0.1.0-{manifest_sha(bundle_010)[:8]}"
    assert os.readlink(image / "opt" / "fabrique-edge" / "current") == f"versions/{name}"
    assert os.readlink(image / "usr" / "local" / "bin" / "edge") == "/opt/fabrique-edge/current/bin/edge"
    script = image / "opt" / "fabrique-edge" / "versions" / name / "bin" / "edge"
    assert script.read_text().splitlines()[0] == f"#!/opt/fabrique-edge/versions/{name}/bin/python"
    assert "no node restarted" in proc.stdout
    assert (site.restarts.read_text() if site.restarts.exists() else "") == restarts


# ---------------------------------------------------------------- the line file's [updates.keys]

def line_with(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "line.toml"
    path.write_text((ROOT / "examples" / "line" / "line.toml").read_text() + "\n" + extra)
    return path


def test_update_keys_are_read_from_the_line_file(tmp_path):
    key = public_key_b64(new_private_key())
    line = load_line(line_with(tmp_path, f'[updates.keys]\ntech-2026 = "{key}"\n'))
    assert line.update_keys == {"tech-2026": base64.b64decode(key)}
    assert load_line(ROOT / "examples" / "line" / "line.toml").update_keys == {}


def test_bad_update_keys_are_located_errors(tmp_path):
    order_key = "xZ39dE2JZBSBQkWAxi+u9JFBMLNA1UyfF/pLfOBrKhI="  # the example line's order key
    path = line_with(tmp_path, '[updates]\nkey = 1\n\n[updates.keys]\n"bad name!" = "abc"\nshort = "AAAA"\n'
                               f'backend = "{order_key}"\n')
    with pytest.raises(ConfigError) as caught:
        load_line(path)
    lines = path.read_text().splitlines()
    issues = {(i.section, i.key): i for i in caught.value.issues}
    assert "did you mean 'keys'" in issues[("updates", "key")].message
    assert "1-32 characters" in issues[("updates.keys", "bad name!")].message
    assert "32 bytes, this one is 3" in issues[("updates.keys", "short")].message
    assert "order-signing key [orders.keys] example-1" in issues[("updates.keys", "backend")].message
    assert lines[issues[("updates.keys", "backend")].line - 1].startswith("backend = ")
