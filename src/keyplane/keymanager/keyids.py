"""ETSI 014 key_IDs: version 7 UUIDs (RFC 9562), made one at a time or a batch at once.

Time-ordered, so the rows a KM writes land at the end of the table's indexes instead of on a
random page each (see :mod:`keyplane.keymanager.vault`).
"""

from __future__ import annotations

import secrets

__all__ = ["new_key_id", "new_key_ids"]


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
    out = []
    for i in range(0, 10 * n, 10):
        r = rand[i:i + 10]
        # version 7 in the top 4 bits of byte 6, variant 0b10 in the top 2 bits of byte 8:
        # 12 bits of rand_a (r[0] low 4, r[1]) and 62 of rand_b (r[2] low 6, r[3:10])
        h = (ms + bytes((0x70 | (r[0] & 0x0F), r[1], 0x80 | (r[2] & 0x3F))) + r[3:]).hex()
        out.append(f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}")
    return out
