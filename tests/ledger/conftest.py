"""Fixtures of the ledger tests: a demo line with a real signing key, a line file, the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # lets test modules `import ledger_kit`

from ledger_kit import BACKEND_KEY, ENTRY, REPO, ROUTE, make_line  # noqa: E402

from edge.config import LineConfig  # noqa: E402
from edge.orders import private_key_pem, public_key_b64  # noqa: E402


@pytest.fixture
def line() -> LineConfig:
    return make_line()


@pytest.fixture
def line_file(tmp_path: Path) -> Path:
    """A real line file on disk that trusts BACKEND_KEY as key id 2026a."""
    path = tmp_path / "line.toml"
    path.write_text(f"""
[line]
id = "demo"
[orders]
max_age_days = 30
[orders.keys]
2026a = "{public_key_b64(BACKEND_KEY)}"
[products.stand]
route = {list(ROUTE)!r}
[products.stand.options.colour]
type = "choice"
choices = ["black", "white", "red"]
default = "black"
[products.stand.options.text]
type = "text"
max_length = 20
""".replace("'", '"'))
    return path


@pytest.fixture
def backend_key_file(tmp_path: Path) -> Path:
    path = tmp_path / "backend.pem"
    path.write_bytes(private_key_pem(BACKEND_KEY))
    path.chmod(0o600)
    return path


@pytest.fixture
def run_edge() -> Callable[..., subprocess.CompletedProcess[str]]:
    """Run the real `edge` command in a child process."""
    def run(*argv: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, PYTHONPATH=str(REPO))
        return subprocess.run([sys.executable, "-c", ENTRY, *argv], capture_output=True, text=True,
                              input=stdin, env=env, cwd=REPO, timeout=60)
    return run
