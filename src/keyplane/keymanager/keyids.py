"""ETSI 014 key_IDs: version 7 UUIDs (RFC 9562), made one at a time or a batch at once.

Time-ordered, so the rows a KM writes land at the end of the table's indexes instead of on a
random page each (see :mod:`keyplane.keymanager.vault`).
"""

from __future__ import annotations

import secrets

__all__ = ["new_key_id", "new_key_ids"]

_VERSION = bytes(0x70 | (b & 0x0F) for b in range(256))
"""Byte 6 of a version 7 UUID from a random byte: version 7 in its top 4 bits."""
_VARIANT = bytes(0x80 | (b & 0x3F) for b in range(256))
"""Byte 8 from a random byte: variant 0b10 in its top 2 bits."""
_ARRAY_FROM = 16
"""Batches of at least this many ids are made with whole-batch byte operations (fewer:
per id, which costs less for one or a few)."""


def new_key_id(unix_s: float) -> str:
    """A fresh ETSI 014 key_ID: a version 7 UUID (RFC 9562 §5.7) for time ``unix_s``.

    48 bits of Unix milliseconds, then 74 random bits (``secrets``): unguessable like a
    version 4 id, and ordered by creation time (see the module docstring). The time part
    tells whoever sees the id when the key was made, which its holders know anyway.
    """
    return new_key_ids(unix_s, 1)[0]


def new_key_ids(unix_s: float, n: int) -> list[str]:
    """``n`` fresh key_IDs as :func:`new_key_id` makes them, from one draw of randomness
    (a batch of keys pays one ``secrets`` call and no ``uuid.UUID`` object per key)."""
    ms = (int(unix_s * 1000) & ((1 << 48) - 1)).to_bytes(6, "big")
    rand = secrets.token_bytes(10 * n)
    if n >= _ARRAY_FROM:
        return _ids_of(ms, rand, n)
    out = []
    for i in range(0, 10 * n, 10):
        r = rand[i:i + 10]
        # version 7 in the top 4 bits of byte 6, variant 0b10 in the top 2 bits of byte 8:
        # 12 bits of rand_a (r[0] low 4, r[1]) and 62 of rand_b (r[2] low 6, r[3:10])
        h = (ms + bytes((0x70 | (r[0] & 0x0F), r[1], 0x80 | (r[2] & 0x3F))) + r[3:]).hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out


def _ids_of(ms: bytes, rand: bytes, n: int) -> list[str]:
    """The ids the per-id loop of :func:`new_key_ids` makes from ``ms`` and ``rand`` (10
    bytes per id), by strided slices over the whole batch: a 100-key batch costs about a
    quarter of the loop's CPU (issue #15). ``tests/unit/keymanager/test_vault.py``
    compares the two."""
    raw = bytearray(16 * n)  # id i is raw[16 i:16 i + 16]: 6 bytes of ms, 10 of rand
    for j in range(6):
        raw[j::16] = ms[j:j + 1] * n
    raw[6::16] = rand[0::10].translate(_VERSION)
    raw[7::16] = rand[1::10]
    raw[8::16] = rand[2::10].translate(_VARIANT)
    for j in range(3, 10):
        raw[6 + j::16] = rand[j::10]
    # hex digits in groups of four, '-' between groups (8 groups, 40 characters per id,
    # the last id without its trailing '-'); the dashes a UUID has not (between groups 7
    # and 8, 6 and 7, 1 and 2 of each id) go, leaving 8-4-4-4-12 and one '-' between ids
    text = bytearray(raw.hex("-", 2).encode())
    del text[34::40]
    del text[29::39]
    del text[4::38]
    text[36::37] = b"," * (n - 1)  # the '-' between ids: split at C speed
    return text.decode().split(",")
