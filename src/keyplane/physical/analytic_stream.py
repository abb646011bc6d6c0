"""The analytic mode's key stream at both ends of a link (``protocol: analytic``).

No per-bit simulation: each frame adds ``R * frame_duration_s`` bits at the rate of
:meth:`~keyplane.physical.runner.LinkRunner.analytic_rate_bps`; whole bytes go out as one
block, announced to Bob with :class:`~keyplane.physical.wire.AnalyticBlock`. The material
is SHAKE-256(per-link seed || block id) at both ends: this mode emulates the *rate* of a
link, its keys are not secret. The loops run on their :class:`LinkRunner` (its clock,
pacing, resynchronisation, sinks and counters), which starts them; they live here so the
runner module stays the bb84-decoy loop, faults and telemetry.
"""

from __future__ import annotations

import hashlib
import logging
import math
from typing import TYPE_CHECKING

from keyplane.errors import ClassicalChannelError
from keyplane.physical.analytic import signal_statistics
from keyplane.physical.modules import BlockOutcome
from keyplane.physical.wire import AnalyticBlock, Sync, SyncAck

if TYPE_CHECKING:
    from keyplane.physical.channel import ClassicalChannel
    from keyplane.physical.runner import LinkRunner

__all__ = [
    "ANALYTIC_LABEL",
    "analytic_alice",
    "analytic_bob",
    "analytic_material",
    "analytic_qber_sample",
]

logger = logging.getLogger("keyplane.physical.runner")

ANALYTIC_LABEL = b"keyplane.analytic.key"


def analytic_qber_sample(runner: LinkRunner, duration_s: float) -> tuple[float, int]:
    """The analytic mode's QBER (:func:`~keyplane.physical.analytic.analytic_qber`, faults
    included) and the test-basis signal detections the emulated protocol would have
    estimated it on over ``duration_s``: the Monitoring Element judges an analytic link
    on the same evidence as an emulated one, so an eavesdropper below the abort
    threshold shows in both modes."""
    d, z = runner.link.decoy, runner.physics.z_basis_probability
    p_test = min(z, 1.0 - z)
    pulses = runner.link.repetition_rate_hz * duration_s
    signal = signal_statistics(runner.physics, d.mu_signal)
    return signal.error_rate, round(pulses * d.p_signal * signal.gain * p_test ** 2)


def analytic_material(seed: int, link_id: str, block_id: int, n_bytes: int) -> bytes:
    """Analytic mode's block material: SHAKE-256 over the per-link seed and block id."""
    link_seed = hashlib.sha256(f"{seed}/{link_id}".encode()).digest()
    return hashlib.shake_256(ANALYTIC_LABEL + link_seed
                             + block_id.to_bytes(8, "big")).digest(n_bytes)


async def analytic_alice(runner: LinkRunner, classical: ClassicalChannel) -> None:
    """Alice's end: each frame adds ``rate * duration`` bits; whole bytes go out as a block."""
    assert runner.first_block_id is not None
    block_id = runner.first_block_id
    reason: str | None = "start"
    carry_bits = 0.0
    next_t = runner.clock.now()

    async def do_sync(nonce: str, why: str) -> None:
        # Bob's analytic end keeps no state: the sync only confirms his incarnation
        ack = await classical.request_peer(Sync(
            link_id=runner.link_id, boot_nonce=runner.boot_nonce, next_frame_id=block_id,
            next_block_id=block_id, reason=why))
        if not isinstance(ack, SyncAck) or ack.boot_nonce != nonce:
            raise ClassicalChannelError(f"link {runner.link_id}: bad answer to sync")
        classical.peer_nonce = nonce

    while runner._running():
        if not await runner._room():
            next_t = runner.clock.now()
            continue
        _, duration = runner._frame()
        rate = runner.analytic_rate_bps()
        # every frame, key or not: a link whose attack leaves no key still shows why
        window = runner.reporter.window
        window.qber, window.qber_sample_bits = analytic_qber_sample(runner, duration)
        runner.stats.last_qber = window.qber
        carry_bits += rate * duration
        n_bytes = math.floor(carry_bits / 8)
        runner.stats.frames += 1
        if n_bytes > 0:
            nonce = await runner._await_peer(classical)
            reason = runner._sync_reason(classical, nonce, reason)
            if reason is None or await runner._resync(do_sync, nonce, reason):
                reason = None
                carry_bits -= 8 * n_bytes
                await _analytic_block(runner, classical, block_id, n_bytes, duration)
                block_id += 1
        next_t = runner._next_frame_at(next_t, duration)
        await runner.clock.sleep_until(next_t)


async def _analytic_block(runner: LinkRunner, classical: ClassicalChannel, block_id: int,
                         n_bytes: int, duration: float) -> None:
    try:
        await classical.send(AnalyticBlock(link_id=runner.link_id, block_id=block_id,
                                           secret_bits=8 * n_bytes))
    except ClassicalChannelError as exc:
        runner.stats.channel_errors += 1
        logger.warning("link %s: analytic block lost: %s", runner.link_id, exc)
        return
    qber, test_bits = analytic_qber_sample(runner, duration)
    outcome = BlockOutcome(link_id=runner.link_id, block_id=block_id, status="delivered",
                           sifted_bits=0, duration_s=duration, secret_bits=8 * n_bytes,
                           qber=qber, test_bits=test_bits,
                           material=analytic_material(runner.seed, runner.link_id, block_id,
                                                  n_bytes))
    await runner._record(outcome)
    await runner._deliver("alice", outcome)


async def analytic_bob(runner: LinkRunner, classical: ClassicalChannel) -> None:
    """Bob's end: derive the material of each announced block and deliver it."""
    while runner._running():
        try:
            msg = await classical.receive(timeout_s=None)
        except ClassicalChannelError:
            return
        if not isinstance(msg, AnalyticBlock):
            logger.warning("link %s: unexpected %s in analytic mode", runner.link_id,
                           msg.KIND)
            continue
        outcome = BlockOutcome(
            link_id=runner.link_id, block_id=msg.block_id, status="delivered",
            sifted_bits=0, duration_s=0.0, secret_bits=msg.secret_bits,
            material=analytic_material(runner.seed, runner.link_id, msg.block_id,
                                    msg.secret_bits // 8))
        await runner._deliver("bob", outcome)
