"""The bytes of a spool segment: its magic, and the record format with its CRC check.

Place in the house: data plane, under the sidecar's disk spool (`proxy/spool.py`, which
writes and reads segments) and its repairs (`proxy/spool_repair.py`, which finds the
intact records in damaged ones). Pure functions over bytes.

A segment is the 8-byte magic b"AMSPOOL1", then records. A record is
`u32 length ‖ u32 crc ‖ payload`, big-endian, where `payload` is the event's canonical
bytes (RFC 8785, never empty) and `crc` is CRC-32 (zlib) of the 4 length bytes and the
payload, so a zero-filled tail never passes as a record.
"""

from __future__ import annotations

import struct
import zlib

MAGIC = b"AMSPOOL1"
HEADER = struct.Struct(">II")  # length, crc
RECORD_OVERHEAD = HEADER.size


def record_size(payload: bytes) -> int:
    """Bytes one record takes in the spool (and against `max_bytes`)."""
    return RECORD_OVERHEAD + len(payload)


def encode(payload: bytes) -> bytes:
    length = len(payload).to_bytes(4, "big")
    crc = zlib.crc32(payload, zlib.crc32(length))
    return length + crc.to_bytes(4, "big") + payload


def intact_size(data: bytes | memoryview, pos: int, limit: int) -> int:
    """Size of the intact record at `pos` in `data[:limit]`, or 0 if it is torn or corrupt."""
    if limit - pos < RECORD_OVERHEAD:
        return 0
    length, crc = (int(v) for v in HEADER.unpack_from(data, pos))
    end = pos + RECORD_OVERHEAD + length
    if length == 0 or end > limit:
        return 0
    if zlib.crc32(data[pos + RECORD_OVERHEAD : end], zlib.crc32(data[pos : pos + 4])) != crc:
        return 0
    return RECORD_OVERHEAD + length
