"""Where the files shipped beside the code are: unit files, broker configs, examples, docs.

Installed from a wheel (a bundle, pip) they are under `<prefix>/share/fabrique-edge/`; in a
source checkout (`pip install -e .`) they are the checkout's own folders.
"""

from __future__ import annotations

import sys
from pathlib import Path

CHECKOUT = Path(__file__).resolve().parent.parent


def share_dir() -> Path:
    """The folder holding systemd/, examples/ and docs/ for this installation."""
    for candidate in (Path(sys.prefix) / "share" / "fabrique-edge", CHECKOUT):
        if (candidate / "systemd" / "fabrique-edge.service").is_file():
            return candidate
    raise FileNotFoundError(
        f"the unit files and broker configs are not installed (looked in {sys.prefix}/share/fabrique-edge "
        f"and {CHECKOUT}): reinstall fabrique-edge from its bundle"
    )


def shared_file(*parts: str) -> Path:
    """One shipped file, e.g. shared_file("systemd", "mosquitto", "hub.conf")."""
    path = share_dir().joinpath(*parts)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from this installation: reinstall fabrique-edge")
    return path
