"""`edge orders ...` run as a real process: keys, QR images, verdicts and exit codes."""

from __future__ import annotations

import json
import stat

import segno
from ledger_kit import NOW, ROGUE_KEY, signed
from PIL import Image

from edge.orders import BASE45, b45decode


def _qr_png(tmp_path, payload: str, name: str = "order.png"):
    path = tmp_path / name
    segno.make(payload, error="m").save(path, kind="png", scale=5, border=4)
    return path


def _one_character_changed(payload: str) -> str:
    """The payload with one Base45 character swapped so it still decodes (a silent tamper)."""
    for i in range(len(payload) - 1, 4, -1):
        for c in BASE45:
            candidate = payload[:i] + c + payload[i + 1:]
            if c == payload[i]:
                continue
            try:
                b45decode(candidate[4:])
            except ValueError:
                continue
            return candidate
    raise AssertionError("no decodable one-character change found")


def test_qr_photo_of_a_valid_order_is_accepted(tmp_path, line_file, run_edge):
    png = _qr_png(tmp_path, signed())
    done = run_edge("orders", "verify", "--line", str(line_file), "--now", str(NOW), "--image", str(png))
    assert done.returncode == 0, done.stderr
    assert "valid: order A7K2-20261118-0042" in done.stdout


def test_tampered_qr_is_rejected_with_reason(tmp_path, line_file, run_edge):
    png = _qr_png(tmp_path, _one_character_changed(signed()))
    done = run_edge("orders", "verify", "--line", str(line_file), "--now", str(NOW), "--image", str(png))
    assert done.returncode == 1
    assert "rejected: bad_signature" in done.stdout


def test_qr_re_signed_with_a_rogue_key_is_rejected_with_reason(tmp_path, line_file, run_edge):
    png = _qr_png(tmp_path, signed(ROGUE_KEY, options={"colour": "red", "text": "FREE STUFF"}))
    done = run_edge("orders", "verify", "--line", str(line_file), "--now", str(NOW), "--image", str(png),
                    "--json")
    assert done.returncode == 1
    verdict = json.loads(done.stdout)
    assert (verdict["ok"], verdict["reason"]) == (False, "bad_signature")


def test_photo_without_a_qr_code_is_unreadable_input(tmp_path, line_file, run_edge):
    blank = tmp_path / "blank.png"
    Image.new("L", (200, 200), 255).save(blank)
    done = run_edge("orders", "verify", "--line", str(line_file), "--image", str(blank))
    assert done.returncode == 2
    assert "no QR code" in done.stderr


def test_verify_takes_the_line_file_from_the_station_file(tmp_path, line_file, run_edge):
    station = tmp_path / "laser.toml"
    station.write_text('[node]\nid = "laser-1"\nline = "demo"\nline_file = "line.toml"\n'
                       '[station]\nkind = "laser"\n[mqtt]\nenabled = false\n')
    done = run_edge("orders", "verify", "--config", str(station), "--now", str(NOW), signed(expires_at=NOW - 5))
    assert done.returncode == 1
    assert "rejected: expired" in done.stdout


def test_keygen_writes_a_private_key_only_the_owner_can_read(tmp_path, run_edge):
    key = tmp_path / "backend.pem"
    done = run_edge("orders", "keygen", str(key), "--key-id", "2026b")
    assert done.returncode == 0, done.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert "PRIVATE KEY" not in done.stdout + done.stderr
    assert done.stdout.strip().splitlines()[-1].startswith('2026b = "')
    again = run_edge("orders", "keygen", str(key))
    assert again.returncode == 2
    assert b"PRIVATE KEY" in key.read_bytes()


def test_made_order_round_trips_through_a_qr_image(tmp_path, line_file, backend_key_file, run_edge):
    png = tmp_path / "made.png"
    made = run_edge("orders", "make", "--key", str(backend_key_file), "--key-id", "2026a", "--order-id", "T-1",
                    "--product", "stand", "--option", "colour=white", "--option", "text=Salut", "--png", str(png),
                    "--line", str(line_file))
    assert made.returncode == 0, made.stderr
    done = run_edge("orders", "verify", "--line", str(line_file), "--image", str(png), "--json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["order"]["options"] == {"colour": "white", "text": "Salut"}
    assert made.stdout.strip() == signed_payload_from(png)


def signed_payload_from(png) -> str:
    import zxingcpp

    return zxingcpp.read_barcodes(Image.open(png))[0].text
