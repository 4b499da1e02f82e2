"""The public face of a job: its secret from the QR's signature, its public id, sealed details,
the QR URL a phone opens, and the name as the public sees it."""

from __future__ import annotations

import time

from hypothesis import given
from hypothesis import strategies as st

from edge.config import load_line
from edge.orders import verify_order
from edge.public import job_secret, order_payload, order_url, public_id, public_name, seal, unseal
from edge.sim.line import EXAMPLES, example_order

QR_ALPHANUMERIC = set("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ $%*+-./:")


def test_the_qr_url_opens_on_a_phone_and_still_makes_the_same_job_at_the_intake():
    line = load_line(EXAMPLES / "line.toml")
    payload = example_order("PUB1", "Camille", product="stand")
    url = order_url("HTTP://HUB.LOCAL", payload)
    assert url.startswith("HTTP://HUB.LOCAL/O/FE1:") and set(url) <= QR_ALPHANUMERIC and " " not in url
    assert order_payload(url) == payload and order_payload(payload) == payload
    plain, linked = verify_order(payload, line, time.time()), verify_order(url, line, time.time())
    assert plain.ok and linked.ok and plain.order == linked.order
    secret = plain.order.secret
    assert len(secret) == 20 and plain.order.to_json()["secret"] == secret
    other = verify_order(example_order("PUB2", "Camille", product="stand"), line, time.time()).order.secret
    assert other != secret  # another order, another signature, another secret


def test_the_secret_gives_a_public_id_and_opens_only_its_own_sealed_details():
    secret, other = job_secret(b"\x01" * 64), job_secret(b"\x02" * 64)
    assert secret == job_secret(b"\x01" * 64) and secret != other
    assert len(public_id(secret)) == 8 and public_id(secret) != public_id(other)
    assert secret not in public_id(secret)
    token = seal(secret, {"text": "Camille", "colour": "red"})
    assert "Camille" not in token
    assert unseal(secret, token) == {"text": "Camille", "colour": "red"}
    assert unseal(other, token) is None
    assert unseal(secret, token[:-4] + "AAAA") is None
    assert unseal(secret, "not base64!") is None


@given(st.text(alphabet=sorted(QR_ALPHANUMERIC), min_size=1, max_size=300))
def test_any_payload_text_survives_the_url_and_back(text):
    url = order_url("HTTPS://TRAILER.EXAMPLE", text)
    assert set(url) <= QR_ALPHANUMERIC - {" "}
    assert order_payload(url) == text


def test_the_public_sees_the_name_as_the_line_allows():
    assert public_name("Camille", "initial") == "C."
    assert public_name("élodie Marie", "initial") == "É."
    assert public_name("Jean Paul", "first") == "Jean"
    assert public_name("Camille", "none") == ""
    assert public_name("  ", "initial") == ""


def test_the_line_file_says_what_the_public_sees_and_a_bad_policy_is_located(tmp_path):
    import pytest

    from edge.config import ConfigError

    line = load_line(EXAMPLES / "line.toml")
    assert line.public.name == "initial" and line.public.url == "HTTP://HUB.LOCAL"
    assert set(line.public.stations) == {"intake", "laser", "printer", "transfer", "inspection", "pickup"}
    assert sum(len(s.trades) for s in line.public.stations.values()) >= 40  # the stand needs some forty trades
    text = (EXAMPLES / "line.toml").read_text()
    bad = tmp_path / "line.toml"
    bad.write_text(text.replace('name = "initial"', 'name = "full"').replace('"HTTP://HUB.LOCAL"', '"http://x/y"'))
    with pytest.raises(ConfigError) as caught:
        load_line(bad)
    issues = "\n".join(str(i) for i in caught.value.issues)
    assert "[public] name" in issues and "[public] url" in issues, issues
