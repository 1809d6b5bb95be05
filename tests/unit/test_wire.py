"""The hand-assembled wire encoding gives protobuf's own bytes (xds/wire.py)."""

from __future__ import annotations

from google.protobuf.internal.encoder import _VarintBytes

from meshpilot.xds import wire


def test_varint_is_protobufs_at_every_width() -> None:
    values = [*range(0, 0x4100), 0x1FFFFF, 0x200000, 2**32 - 1, 2**35 + 7, 2**63 - 1]
    assert [wire.varint(v) for v in values] == [_VarintBytes(v) for v in values]


def test_length_delimited_field() -> None:
    payload = b"x" * 300  # a two-byte length
    assert wire.length_delimited(2, payload) == b"\x12" + _VarintBytes(300) + payload
