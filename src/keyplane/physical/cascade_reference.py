"""Per-bit reference Cascade: the test oracle of :mod:`keyplane.physical.cascade`.

Plain Python, one search at a time, with the same passes and keyed permutations as the
vectorized :class:`~keyplane.physical.cascade.CascadeBob`; tests check that both leave Bob
with Alice's key.
"""

from __future__ import annotations

import numpy as np

from keyplane.physical.bits import Bits, keyed_permutation
from keyplane.physical.cascade import _pass_label

__all__ = ["cascade_reference"]


def cascade_reference(alice_key: Bits, bob_key: Bits, seed: bytes,
                      sizes: list[int]) -> tuple[Bits, int]:
    """Per-bit reference Cascade with the same passes and permutations, one search at a time.

    ``ask(p, s, e)`` stands for the channel: Alice's parity of positions ``[s, e)`` of pass
    ``p``. After each pass, every block of every pass so far is checked again until all
    parities agree (the cascade effect, one block at a time). Returns Bob's corrected key
    and the number of parities Alice disclosed.
    """
    n = len(alice_key)
    bob = [int(b) for b in bob_key]
    alice = [int(a) for a in alice_key]
    perms: list[list[int]] = []
    leaked = 0

    def ask(p: int, s: int, e: int) -> int:
        nonlocal leaked
        leaked += 1
        acc = 0
        for j in range(s, e):
            acc ^= alice[perms[p][j]]
        return acc

    def mine(p: int, s: int, e: int) -> int:
        acc = 0
        for j in range(s, e):
            acc ^= bob[perms[p][j]]
        return acc

    def binary(p: int, s: int, e: int, a_par: int) -> int:
        while e - s > 1:
            mid = s + (e - s) // 2
            left = ask(p, s, mid)
            if left != mine(p, s, mid):
                e, a_par = mid, left
            else:
                s, a_par = mid, a_par ^ left
        return perms[p][s]

    tops: list[list[int]] = []
    for index, k in enumerate(sizes):
        perms.append([int(x) for x in keyed_permutation(n, seed, _pass_label(index))])
        tops.append([ask(index, b, min(b + k, n)) for b in range(0, n, k)])
        pending = True
        while pending:
            pending = False
            for p in range(index + 1):
                kp = sizes[p]
                for blk, a_par in enumerate(tops[p]):
                    s, e = blk * kp, min(blk * kp + kp, n)
                    if mine(p, s, e) != a_par:
                        bob[binary(p, s, e, a_par)] ^= 1
                        pending = True
    return np.asarray(bob, dtype=np.uint8), leaked
