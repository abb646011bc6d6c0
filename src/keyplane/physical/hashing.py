"""Universal hashing: Toeplitz privacy amplification and the verification tag.

Privacy amplification maps the reconciled key ``x`` (n bits) to ``y = T x`` over GF(2),
``T`` an ``l x n`` Toeplitz matrix (a 2-universal family: Carter-Wegman; Krawczyk,
CRYPTO 1994) given by ``n + l - 1`` bits ``t`` expanded with SHAKE-128 from a 32-byte seed
Alice sends: ``T[i, j] = t[i - j + n - 1]``. Then ``y_i = (t * x)[i + n - 1]`` (a linear
convolution), which :func:`toeplitz_hash` computes with one real FFT of length
``>= n + l - 1`` (no wrap-around reaches the needed outputs), rounds, and reduces mod 2:
O(n log n) instead of O(n l). From :data:`~keyplane.physical.bits.FAST_MIN_BITS` bits on,
with the ``fast`` extra, :mod:`.fasthash` computes the same product in GF(2) with
carry-less multiplication instead (4-5x less CPU at 10^6 bits, no rounding).
:func:`toeplitz_hash_reference` is the direct GF(2) product both are tested against.

Verification uses a polynomial universal hash over the prime field GF(p), p = 2^127 - 1:
the key is cut into 120-bit chunks ``c_1..c_m`` and ``tag = sum c_i r^(m-i+1) + n mod p``
with a fresh random point ``r`` per block; two different keys collide with probability
at most ``(m + 1) / p`` (< 2^-106 for 10^6-bit blocks). The tag discloses
:data:`VERIFY_TAG_BITS` bits, counted as leaked. From
:data:`~keyplane.physical.bits.FAST_MIN_BITS` bits on, with the ``fast`` extra,
:mod:`.fasttag` computes the same tag compiled (14x less CPU at 10^6 bits).
"""

from __future__ import annotations

import numpy as np

from keyplane.errors import PhysicalError
from keyplane.physical.bits import FAST_MIN_BITS, Bits, pack, shake_bits

__all__ = [
    "PA_LABEL",
    "VERIFY_TAG_BITS",
    "polynomial_tag",
    "toeplitz_bits",
    "toeplitz_hash",
    "toeplitz_hash_reference",
]

PA_LABEL = b"keyplane.pa.toeplitz"
VERIFY_TAG_BITS = 127
_P127 = (1 << 127) - 1
_CHUNK_BYTES = 15


def _fast_len(target: int) -> int:
    """The smallest 5-smooth integer ``>= target`` (scipy.fft.next_fast_len(real=True)):
    pocketfft's fastest lengths, without importing scipy.fft (0.2 s of CPU at each link
    worker's start) for numpy.fft, the same pocketfft with the same speed here."""
    if target <= 6:
        return max(target, 1)
    best = 1 << (target - 1).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            # the smallest power of two taking p35 to target or above
            q = -(-target // p35)
            p2 = 1 << (q - 1).bit_length()
            best = min(best, p2 * p35)
            p35 *= 3
        p5 *= 5
    return best


def toeplitz_bits(seed: bytes, n_in: int, n_out: int) -> Bits:
    """The ``n_in + n_out - 1`` bits defining the Toeplitz matrix for ``seed``."""
    return shake_bits(seed, PA_LABEL, n_in + n_out - 1)


def toeplitz_hash(key: Bits, t: Bits, n_out: int) -> Bits:
    """``T key`` over GF(2) by FFT convolution.

    Args:
        key: (n,) uint8 ∈ {0,1}.
        t: (n + n_out - 1,) uint8 ∈ {0,1}, the matrix's diagonals.
        n_out: output length ``l``.

    Returns:
        (n_out,) uint8 ∈ {0,1}.

    Raises:
        ValueError: ``t`` has the wrong length.
        PhysicalError: floating-point error too large to round safely (never seen for
            blocks up to 10^7 bits; checked on every call).
    """
    n = key.shape[0]
    if t.shape[0] != n + n_out - 1:
        raise ValueError(f"need {n + n_out - 1} Toeplitz bits, got {t.shape[0]}")
    if n_out == 0:
        return np.zeros(0, dtype=np.uint8)
    if n >= FAST_MIN_BITS:
        from keyplane.physical import fasthash  # numba only for large keys
        if fasthash.available():
            fast: Bits = fasthash.toeplitz_hash(key, t, n_out)
            return fast
    size = _fast_len(n + n_out - 1)
    # zero-padded float64 inputs written once (no astype copy, then a padded copy), and
    # every later step in place: at 10^7 bits each array is ~100 MB, so passes over
    # memory, not the FFTs' arithmetic, set the cost
    buf = np.zeros(size, dtype=np.float64)
    buf[:n] = key
    fx = np.fft.rfft(buf)
    buf[:t.shape[0]] = t
    buf[t.shape[0]:] = 0.0
    ft = np.fft.rfft(buf)
    del buf
    fx *= ft
    del ft
    conv = np.fft.irfft(fx, size)[n - 1:n - 1 + n_out]
    rounded = np.rint(conv)
    conv -= rounded
    np.abs(conv, out=conv)
    if float(conv.max()) > 0.25:
        raise PhysicalError("Toeplitz FFT lost precision; block too large")
    # rounded is integral, >= 0 and <= n < 2^31: its parity through int32, not np.fmod
    # (libm's fmod per element: 28x slower, 0.5 s at 10^7 bits)
    out: Bits = (rounded.astype(np.int32) & 1).astype(np.uint8)
    return out


def toeplitz_hash_reference(key: Bits, t: Bits, n_out: int) -> Bits:
    """Direct GF(2) product ``y_i = XOR_j T[i, j] key[j]`` (slow; the test oracle)."""
    n = key.shape[0]
    out = np.zeros(n_out, dtype=np.uint8)
    for i in range(n_out):
        acc = 0
        for j in range(n):
            acc ^= int(t[i - j + n - 1]) & int(key[j])
        out[i] = acc
    return out


def polynomial_tag(key: Bits, point: bytes) -> bytes:
    """Polynomial hash of ``key`` at ``point`` over GF(2^127 - 1), as 16 bytes.

    Args:
        key: (n,) uint8 ∈ {0,1}.
        point: 16 random bytes (reduced mod p) sent by the tag's sender.
    """
    r = int.from_bytes(point, "big") % _P127
    data = pack(key)
    if key.shape[0] >= FAST_MIN_BITS:
        from keyplane.physical import fasttag  # numba only for large keys
        if fasttag.available():
            return fasttag.polynomial_tag(data, _CHUNK_BYTES, r, int(key.shape[0]))
    acc = 0
    for i in range(0, len(data), _CHUNK_BYTES):
        acc = (acc + int.from_bytes(data[i:i + _CHUNK_BYTES], "big")) * r % _P127
    acc = (acc + key.shape[0]) % _P127
    return bytes(acc.to_bytes(16, "big"))
