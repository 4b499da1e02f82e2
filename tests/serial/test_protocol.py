"""The frame codec: pure, fuzzed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from firmware_bridge import protocol as p

frames = st.builds(
    p.Frame,
    kind=st.sampled_from(list(p.Kind)),
    seq=st.integers(0, 255),
    payload=st.binary(max_size=p.MAX_PAYLOAD),
)


def test_crc_matches_the_ccitt_false_check_value() -> None:
    assert p.crc16(b"123456789") == 0x29B1


@given(frames)
def test_every_frame_survives_a_clean_line(frame: p.Frame) -> None:
    wire = p.encode_frame(frame)
    assert wire.count(0) == 1 and wire.endswith(b"\x00")
    assert p.FrameDecoder().feed(wire) == [frame]


@settings(max_examples=400)
@given(st.binary(max_size=600))
def test_decoder_never_raises_on_line_noise(noise: bytes) -> None:
    decoder = p.FrameDecoder()
    for frame in decoder.feed(noise):
        assert len(frame.payload) <= p.MAX_PAYLOAD


@settings(max_examples=400, derandomize=True)
@given(frames, st.data())
def test_decoder_never_accepts_a_frame_with_flipped_bits(frame: p.Frame, data: st.DataObject) -> None:
    wire = bytearray(p.encode_frame(frame))
    for _ in range(data.draw(st.integers(1, 3))):
        bit = data.draw(st.integers(0, len(wire) * 8 - 1))
        wire[bit // 8] ^= 1 << (bit % 8)
    decoded = p.FrameDecoder().feed(bytes(wire) + b"\x00")
    assert all(f == frame for f in decoded)
    assert len(decoded) <= 1


@settings(max_examples=200, derandomize=True)
@given(frames, st.binary(min_size=1, max_size=80))
def test_decoder_finds_the_next_frame_after_garbage(frame: p.Frame, garbage: bytes) -> None:
    decoder = p.FrameDecoder()
    decoded = decoder.feed(garbage + b"\x00" + p.encode_frame(frame))
    assert decoded[-1] == frame


def test_truncated_frame_is_thrown_away_and_counted() -> None:
    wire = p.encode_frame(p.Frame(p.Kind.COMMAND, 3, b"\x10\x01\x01"))
    decoder = p.FrameDecoder()
    assert decoder.feed(wire[:-4] + b"\x00") == []
    assert decoder.rejected == 1


def test_oversized_payload_is_refused_before_it_reaches_the_wire() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        p.encode_frame(p.Frame(p.Kind.COMMAND, 0, bytes(p.MAX_PAYLOAD + 1)))


def test_identity_and_status_round_trip() -> None:
    identity = p.Identity(1, (1, 2, 3), 4, 4, 1, "gripper-board")
    assert p.parse_identity(p.identity_bytes(identity)) == identity
    status = p.BoardStatus(True, 0b1000, 0b0101, 123456, 750)
    assert p.parse_status(p.status_bytes(status)) == status
