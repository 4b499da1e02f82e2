"""The visitor's QR order: what a station accepts, and why it refuses everything else."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ledger_kit import NOW, ROGUE_KEY, make_line, signed
from trailer import EXAMPLES

from edge.config import load_line
from edge.orders import REASONS, b45decode, b45encode, sign_order, verify_order

LINE = make_line()
GOOD = signed()


def test_valid_order_is_accepted_with_defaults_filled_in(line):
    verdict = verify_order(GOOD, line, NOW)
    assert verdict.ok, verdict
    assert verdict.order.order_id == "A7K2-20261118-0042"
    assert verdict.order.options == {"colour": "red", "text": "Bonjour Lyon!", "size": 2}


def test_typical_order_fits_a_small_qr_code():
    assert len(GOOD) < 250
    assert set(GOOD) <= set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")


def test_scanner_line_ending_is_tolerated(line):
    assert verify_order(GOOD + "\r\n", line, NOW).ok
    assert verify_order(GOOD.encode(), line, NOW).ok


def test_garbage_is_rejected_as_bad_format(line):
    verdict = verify_order("https://example.com/not-an-order", line, NOW)
    assert (verdict.ok, verdict.reason) == (False, "bad_format")
    assert verdict.detail


def test_changed_character_is_rejected_as_bad_signature(line):
    i = len("FE1:") + 30
    tampered = GOOD[:i] + ("A" if GOOD[i] != "A" else "B") + GOOD[i + 1:]
    assert verify_order(tampered, line, NOW).reason in ("bad_signature", "bad_format")
    body = bytearray(b45decode(GOOD[4:]))
    body[20] ^= 0x01  # inside the issued-at field: still well formed, no longer signed
    verdict = verify_order("FE1:" + b45encode(bytes(body)), line, NOW)
    assert verdict.reason == "bad_signature"


def test_order_signed_by_a_rogue_key_with_a_trusted_id_is_rejected(line):
    assert verify_order(signed(ROGUE_KEY), line, NOW).reason == "bad_signature"


def test_order_signed_with_an_unlisted_key_id_is_rejected(line):
    verdict = verify_order(signed(key_id="2025old"), line, NOW)
    assert verdict.reason == "unknown_key"
    assert "2025old" in verdict.detail


def test_rotated_key_is_accepted_once_listed(line):
    line.order_keys["2027b"] = line.order_keys["2026a"]
    assert verify_order(signed(key_id="2027b"), line, NOW).ok


def test_expired_order_is_rejected(line):
    assert verify_order(signed(expires_at=NOW - 1), line, NOW).reason == "expired"


def test_order_older_than_the_line_allows_is_rejected(line):
    verdict = verify_order(signed(issued_at=NOW - 31 * 86400, expires_at=0), line, NOW)
    assert verdict.reason == "expired"


def test_unknown_product_is_rejected(line):
    assert verify_order(signed(product="mug", options={}), line, NOW).reason == "unknown_product"


def test_colour_not_offered_is_rejected(line):
    verdict = verify_order(signed(options={"colour": "gold"}), line, NOW)
    assert verdict.reason == "bad_option"
    assert "gold" in verdict.detail


def test_option_the_product_does_not_have_is_rejected(line):
    assert verify_order(signed(options={"glitter": "yes"}), line, NOW).reason == "bad_option"


def test_missing_required_engraving_is_rejected(line):
    assert verify_order(signed(product="keyring", options={}), line, NOW).reason == "bad_option"


def test_engraving_with_characters_the_laser_cannot_cut_is_rejected(line):
    verdict = verify_order(signed(options={"text": "Hi <script>"}), line, NOW)
    assert verdict.reason == "bad_option"


def test_integer_option_out_of_range_is_rejected(line):
    assert verify_order(signed(options={"size": 9}), line, NOW).reason == "bad_option"


def test_engraving_longer_than_allowed_is_rejected_as_too_long(line):
    verdict = verify_order(signed(options={"text": "x" * 21}), line, NOW)
    assert verdict.reason == "too_long"


def test_oversized_payload_is_rejected_as_too_long(line):
    assert verify_order(GOOD + "A" * 1000, line, NOW).reason == "too_long"


def test_non_text_input_is_rejected_not_raised(line):
    for junk in (None, 42, ["FE1:"], b"\xff\xfe", object()):
        assert verify_order(junk, line, NOW).reason == "bad_format"


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.binary(max_size=400), st.text(max_size=400),
                 st.text("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:", max_size=400).map(lambda t: "FE1:" + t)))
def test_random_input_is_never_accepted(junk):
    verdict = verify_order(junk, LINE, NOW)
    assert not verdict.ok
    assert verdict.reason in REASONS


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_single_bit_flip_in_the_scanned_text_is_never_accepted(data):
    raw = bytearray(GOOD.encode())
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    verdict = verify_order(bytes(raw), LINE, NOW)
    assert not verdict.ok
    assert verdict.reason in REASONS


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_single_bit_flip_in_the_signed_record_is_never_accepted(data):
    record = bytearray(b45decode(GOOD[4:]))
    i = data.draw(st.integers(0, len(record) - 1))
    record[i] ^= 1 << data.draw(st.integers(0, 7))
    verdict = verify_order("FE1:" + b45encode(bytes(record)), LINE, NOW)
    assert not verdict.ok
    assert verdict.reason in ("bad_format", "bad_signature", "unknown_key")


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_base45_round_trips_any_bytes(blob):
    assert b45decode(b45encode(blob)) == blob


@settings(max_examples=60, deadline=None)
@given(text=st.text("ABCDEFGHIJabcdefghij0123456789 !-'", max_size=20),
       colour=st.sampled_from(["black", "white", "red"]))
def test_any_catalogue_order_signed_by_the_backend_is_accepted(text, colour):
    from ledger_kit import BACKEND_KEY, make_order

    payload = sign_order(make_order(options={"colour": colour, "text": text}), BACKEND_KEY)
    verdict = verify_order(payload, LINE, NOW)
    assert verdict.ok, verdict
    assert verdict.order.options["text"] == text


def test_worked_example_in_the_docs_is_a_valid_order():
    import base64
    import re

    from ledger_kit import REPO

    doc = (REPO / "docs" / "orders.md").read_text()
    payload = re.search(r"Payload \(\d+ characters\):\n\n```\n(.*)\n```", doc).group(1)
    key = re.search(r'ex1 = "([^"]+)"', doc).group(1)
    line = make_line()
    line.order_keys.clear()
    line.order_keys["ex1"] = base64.b64decode(key)
    verdict = verify_order(payload, line, 1_795_000_000 + 60)
    assert verdict.ok, verdict
    assert verdict.order.options["text"] == "Bonjour Lyon!"


def test_empty_engraving_on_a_keyring_that_needs_one_is_rejected(line):
    assert verify_order(signed(product="keyring", options={"text": "  "}), line, NOW).reason == "bad_option"


def test_accent_typed_as_two_code_points_is_engraved_as_one_letter(line):
    from edge.config import OptionSpec, Product

    text = OptionSpec("text", "text", max_length=5, charset="Leéa")
    line.products["keyring"] = Product("keyring", "Keyring", ("laser",), {"text": text})
    verdict = verify_order(signed(product="keyring", options={"text": "Le\u0301a"}), line, NOW)
    assert verdict.ok, verdict
    assert verdict.order.options["text"] == "Léa"


FRENCH_NAMES = ["Hélène", "Françoise", "Zoë", "Cœur", "L'Haÿ-les-Roses", "L’Œuvre", "Ève", "Maëlys Noël",
                "JÉRÔME", "Anaïs", "Benoît", "Lætitia"]


def example_stand(line):
    """The example line's stand (its French charset) on the test line, which trusts BACKEND_KEY."""
    line.products["stand"] = load_line(EXAMPLES / "line.toml").products["stand"]
    return line


@pytest.mark.parametrize("name", FRENCH_NAMES)
def test_french_names_are_accepted_by_the_example_charset(line, name):
    verdict = verify_order(signed(options={"text": name}), example_stand(line), NOW)
    assert verdict.ok, verdict
    assert verdict.order.options["text"] == name


@pytest.mark.parametrize("name", FRENCH_NAMES)
def test_french_names_typed_with_combining_accents_are_accepted_as_composed(line, name):
    decomposed = unicodedata.normalize("NFD", name)
    verdict = verify_order(signed(options={"text": decomposed}), example_stand(line), NOW)
    assert verdict.ok, verdict
    assert verdict.order.options["text"] == name


def test_a_character_outside_the_example_charset_is_refused_by_name(line):
    verdict = verify_order(signed(options={"text": "Łukasz"}), example_stand(line), NOW)
    assert verdict.reason == "bad_option" and "'Ł'" in verdict.detail


def test_the_default_charset_takes_french_names_too(line):
    for name in (n for n in FRENCH_NAMES if len(n) <= 12):  # the keyring's max_length
        verdict = verify_order(signed(product="keyring", options={"text": name}), line, NOW)
        assert verdict.ok, (name, verdict)
