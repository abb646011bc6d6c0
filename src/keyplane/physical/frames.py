"""Frames and blocks of one link's runner: ids across restarts, seeds, frame length, counters.

The bookkeeping :class:`~keyplane.physical.runner.LinkRunner` keeps beside its loops, in a
module of its own so the runner reads as the pacing, fault and telemetry loop it is:
block ids that stay monotone across restarts without stored state (:func:`block_id_base`),
per-end generator seeds that never replay a previous life (:func:`link_rng_seed`), the
default frame length, the runner's counters and the telemetry window (blocks summed
between two telemetry messages).
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from keyplane.physical.physics import LinkPhysics

if TYPE_CHECKING:
    from keyplane.config import QuantumLink
    from keyplane.physical.modules import BlockOutcome

__all__ = [
    "BLOCK_ID_SHIFT",
    "MAX_BLOCK_ID",
    "MAX_FRAME_S",
    "MIN_FRAME_S",
    "End",
    "LinkStats",
    "TelemetryWindow",
    "block_id_base",
    "default_frame_duration",
    "link_rng_seed",
]

End = Literal["alice", "bob"]
MIN_FRAME_S = 1e-3
MAX_FRAME_S = 1.0
BLOCK_ID_SHIFT = 20
"""Block ids per millisecond of wall clock between two starts of an Alice end."""
MAX_BLOCK_ID = 2**63 - 1
"""Block ids fit the key store's signed 64-bit column."""


def block_id_base(wall_s: float) -> int:
    """First block id of an Alice end started at ``wall_s`` (Unix seconds).

    ``floor(wall_s * 1000) << 20``: an end that ran since an earlier start (more than a
    millisecond before) delivered fewer than 2^20 blocks per elapsed millisecond (a block
    takes far longer than 1 ns), so the new base lies above every id it used, and ids stay
    monotone across restarts without any state surviving the process. Fits a signed
    64-bit integer until the year 2248. Assumes the wall clock does not step back across
    the restart (pass ``first_block_id`` to :class:`~keyplane.physical.runner.LinkRunner`
    where it may).

    Raises:
        ValueError: ``wall_s`` is negative or too far in the future.
    """
    base = math.floor(wall_s * 1000) << BLOCK_ID_SHIFT
    if not 0 <= base <= MAX_BLOCK_ID:
        raise ValueError(f"wall clock {wall_s} s gives no valid block id base")
    return base


def link_rng_seed(seed: int, link_id: str, end: End, salt: int = 0) -> list[int]:
    """Seed sequence of one end's generator (independent per link, end and start).

    ``salt`` is the runner's first block id, which grows with the wall clock: a module
    restarted mid-run must never replay the photons, bases and Cascade choices of its
    previous life, or the link would distil the same key a second time under new block
    ids. Under a virtual clock the salt is as reproducible as the seed.
    """
    digest = hashlib.sha256(f"{seed}/{link_id}/{end}/{salt}".encode()).digest()
    return [int.from_bytes(digest[i:i + 4], "big") for i in range(0, 16, 4)]


def default_frame_duration(link: QuantumLink) -> float:
    """About one block of sifted bits per frame at the nominal physics, within [1 ms, 1 s]."""
    from keyplane.physical.measured import measured_physics  # MDI/TF-QKD, BBM92

    measured = measured_physics(link)
    per_s = (measured or LinkPhysics.from_link(link)).expected_sifted_fraction() \
        * link.repetition_rate_hz
    if per_s <= 0:
        return MAX_FRAME_S
    return min(MAX_FRAME_S, max(MIN_FRAME_S, link.postprocessing.block_size_bits / per_s))


@dataclass(slots=True)
class LinkStats:
    """Counters of one runner (Alice's end counts blocks; each end counts deliveries)."""

    frames: int = 0
    delivered_blocks: int = 0
    delivered_bits: int = 0
    aborted_blocks: int = 0
    discarded_blocks: int = 0
    qber_aborts: int = 0
    channel_errors: int = 0
    resyncs: int = 0
    sifted_bits: int = 0
    leaked_ec_bits: int = 0
    last_qber: float | None = None


@dataclass(slots=True)
class TelemetryWindow:
    """Alice's blocks since the last telemetry message, and the last rates achieved."""

    blocks: int = 0
    sifted_bits: int = 0
    secret_bits: int = 0
    leaked_bits: int = 0
    duration_s: float = 0.0  # emulated time the blocks cover
    block_id: int | None = None
    qber: float | None = None
    qber_sample_bits: int = 0  # the test bits of the block ``qber`` comes from
    ec_efficiency: float | None = None
    skr_bps: float = 0.0
    sifted_rate_bps: float = 0.0
    sent: bool = False  # a message with measured rates went out

    def add(self, o: BlockOutcome) -> None:
        self.blocks += 1
        self.sifted_bits += o.sifted_bits
        self.secret_bits += o.secret_bits
        self.leaked_bits += o.leaked_ec_bits + o.leaked_verify_bits
        self.duration_s += o.duration_s
        self.block_id = o.block_id
        if o.qber is not None:
            self.qber, self.qber_sample_bits = o.qber, o.test_bits
        if o.ec_efficiency is not None:
            self.ec_efficiency = o.ec_efficiency

    def take(self) -> tuple[int, int, int, int | None]:
        """Close the window: ``(sifted, secret, leaked bits, last block id)``; the rates
        become this window's (or stay the last ones when no block completed in it)."""
        if self.blocks:
            duration = max(self.duration_s, 1e-12)
            self.skr_bps = self.secret_bits / duration
            self.sifted_rate_bps = self.sifted_bits / duration
        out = (self.sifted_bits, self.secret_bits, self.leaked_bits, self.block_id)
        self.blocks = self.sifted_bits = self.secret_bits = self.leaked_bits = 0
        self.duration_s = 0.0
        self.block_id = None
        return out
