"""Time-ordered record and op ids (UUID version 7, RFC 9562), without importing uuid6.

uuid6 reads its own version through importlib.metadata at import, which costs more than
the rest of the engine's imports together; this is the same algorithm in a few lines.
"""

from __future__ import annotations

import os
import time

_last_ms = 0


def uuid7() -> str:
    """A new UUIDv7 as text: 48-bit Unix milliseconds, then 74 random bits.

    Ids from one process strictly increase: a call within the same millisecond as the last
    one takes the next millisecond, as uuid6.uuid7 does.
    """
    global _last_ms
    ms = max(time.time_ns() // 1_000_000, _last_ms + 1)
    _last_ms = ms
    rand = int.from_bytes(os.urandom(10), "big")  # 80 random bits; 74 are used
    value = (ms & 0xFFFF_FFFF_FFFF) << 80 | 0x7 << 76 | (rand >> 68 & 0xFFF) << 64 \
        | 0b10 << 62 | (rand & 0x3FFF_FFFF_FFFF_FFFF)
    text = f"{value:032x}"
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


def new_id() -> str:
    """A new record or op id: made on the device, so a retried write can never make a second record."""
    return uuid7()
