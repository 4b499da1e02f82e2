"""`edge demo`, the README's first command, runs the whole simulated line and says so."""

from __future__ import annotations

from trailer import run_edge


def test_the_demo_line_makes_a_stand_and_every_station_agrees(tmp_path):
    result = run_edge("demo", "--pace", "0", "--keep", str(tmp_path / "line"), timeout=240)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "a tampered copy is refused" in out and "bad_signature" in out
    assert "job completed (same)" in out and out.count("(same)") == 6
    assert "DIFFERENT" not in out
    assert (tmp_path / "line" / "hub" / "mosquitto.conf").exists()
