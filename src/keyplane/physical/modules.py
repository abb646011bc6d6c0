"""The two QKD modules of a link: Alice (``endpoints[0]``) and Bob (``endpoints[1]``).

Each module is an I/O shell around the pure stages (:mod:`.physics`, :mod:`.sifting`,
:mod:`.estimation`, :mod:`.reconcile` (Cascade or LDPC), :mod:`.hashing`): it exchanges
the messages of :mod:`.wire` with its peer over a
:class:`~keyplane.physical.channel.ClassicalChannel` and returns one :class:`BlockOutcome`
per block. Alice also runs the link's emulator (source, fibre, eavesdropper, Bob's
detectors) and sends Bob his detection record over the quantum pipe.

Per frame: quantum frame → sift request → sift reply; both ends buffer the sifted
key-basis bits and the test-basis events between them. Whenever ``block_size_bits`` key
bits are buffered, a block runs: parameter estimation on the block's own test-basis
events (abort above ``qber_threshold``: the block never reaches a sink), reconciliation
(Cascade or LDPC, ``postprocessing.reconciliation``),
verification (polynomial tag), privacy amplification (Toeplitz by FFT) to the finite-key
length of Lim et al. 2014 (:mod:`.finite_key`). A block that fails verification or whose
two ends disagree on its length is discarded and counted. Nothing here logs or returns key
material except ``BlockOutcome.material`` (hidden from repr) for delivery to the end's own
sink.

Each block is handed to the caller's ``on_block`` as soon as it is complete, before the
module reads the channel again: an exchange that fails later in the same frame never
takes an already-verified block with it (Bob delivers after sending his verdict, Alice
after reading it).

Resynchronization (:class:`~keyplane.physical.wire.Sync`): Alice's
:meth:`AliceModule.sync` resets her buffer and in-flight state and asks Bob to do the
same (:meth:`BobModule.request_sync` interrupts whatever receive Bob is in; his
:meth:`BobModule.run_frame` applies it and returns). Both then continue from Alice's
next frame and block ids; anything older still on the wire is dropped as stale.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import numpy as np

from keyplane.bus.codec import Message
from keyplane.config import QuantumLink
from keyplane.errors import ClassicalChannelError
from keyplane.extras import require
from keyplane.physical.bits import (
    FAST_MIN_BITS,
    Bits,
    binary_entropy,
    no_hugepage_advice,
    pack,
    unpack,
)
from keyplane.physical.channel import (
    DEFAULT_PEER_TIMEOUT_S,
    DEFAULT_PING_TIMEOUT_S,
    ChannelInterrupted,
    ClassicalChannel,
)
from keyplane.physical.finite_key import BlockCounts, FiniteKeyBound, finite_key_length
from keyplane.physical.hashing import (
    VERIFY_TAG_BITS,
    polynomial_tag,
    toeplitz_bits,
    toeplitz_hash,
)
from keyplane.physical.measured import (
    emulate_measured_frame,
    measured_block_length,
    measured_physics,
)
from keyplane.physical.physics import LinkPhysics, emulate_frame
from keyplane.physical.reconcile import expect, reconcile_alice, reconcile_bob
from keyplane.physical.sifting import (
    SiftedKeyBuffer,
    class_counts,
    decode_classes,
    encode_classes,
    sift_frame,
    sift_mask,
)
from keyplane.physical.wire import (
    PeRequest,
    PeResult,
    QuantumFrame,
    ResyncRequest,
    SiftReply,
    SiftRequest,
    Sync,
    SyncAck,
    VerifyRequest,
    VerifyResult,
)

__all__ = ["AliceModule", "BlockOutcome", "BlockSink", "BlockStatus", "BobModule"]

logger = logging.getLogger(__name__)

BlockStatus = Literal["delivered", "aborted_qber", "aborted_no_key", "verify_failed"]
M = TypeVar("M", bound=Message)
R = TypeVar("R")


async def _ignore_block(outcome: BlockOutcome) -> None:
    return None


BlockSink = Callable[["BlockOutcome"], Awaitable[None]]
"""Receives each block's outcome as soon as the block is complete."""


@dataclass(slots=True)
class BlockOutcome:
    """What happened to one block at one end (material only when ``delivered``)."""

    link_id: str
    block_id: int
    status: BlockStatus
    sifted_bits: int
    duration_s: float
    qber: float | None = None
    test_bits: int = 0
    """Test-basis bits ``qber`` was estimated on (the Monitoring Element weighs it so)."""
    leaked_ec_bits: int = 0
    leaked_verify_bits: int = 0
    corrected_bits: int = 0
    secret_bits: int = 0
    cascade_rounds: int = 0
    bounds: FiniteKeyBound | None = None
    reason: str = ""
    material: bytes | None = field(default=None, repr=False)

    @property
    def ec_efficiency(self) -> float | None:
        """``f_EC = leaked / (n h(e))`` with ``e`` the block's true error rate."""
        n = self.sifted_bits
        if n <= 0 or self.status in ("aborted_qber",):
            return None
        h = binary_entropy(self.corrected_bits / n)
        return self.leaked_ec_bits / (n * h) if h > 0 else None


def _block_length(link: QuantumLink, counts: BlockCounts, leaked_ec: int
                  ) -> tuple[int, FiniteKeyBound | None]:
    pp, d = link.postprocessing, link.decoy
    measured = measured_physics(link)
    if measured is not None:  # MDI-QKD, TF-QKD, BBM92: the protocol's own bound
        return measured_block_length(measured, counts.n_key, sum(counts.test),
                                     sum(counts.test_errors), leaked_ec, VERIFY_TAG_BITS,
                                     pp.security_epsilon), None
    bound = finite_key_length(counts, (d.mu_signal, d.mu_decoy, d.mu_vacuum),
                              (d.p_signal, d.p_decoy, d.p_vacuum), leaked_ec_bits=leaked_ec,
                              leaked_verify_bits=VERIFY_TAG_BITS, eps_sec=pp.security_epsilon,
                              statistics=pp.finite_key_statistics)
    return bound.length - bound.length % 8, bound


async def _inline(fn: Callable[..., R], *args: Any) -> R:
    return fn(*args)


class _Module:
    def __init__(self, link: QuantumLink, classical: ClassicalChannel,
                 quantum: ClassicalChannel, rng: np.random.Generator, *,
                 cascade_schedule: str | None = None,
                 peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S,
                 offload: Callable[..., Awaitable[Any]] = _inline) -> None:
        # offload: how CPU-heavy stages run (Clock.offload: a worker thread on the real
        # clock, inline on the virtual one)
        self.offload = offload
        self.link = link
        self.link_id = link.link_id
        self.classical = classical
        self.quantum = quantum
        self.rng = rng
        self.cascade_schedule = cascade_schedule or link.postprocessing.cascade_schedule
        self.peer_timeout_s = peer_timeout_s
        self.buffer = SiftedKeyBuffer()
        self.next_block_id = 0
        self.key_basis = LinkPhysics.from_link(link).key_basis
        # large blocks: compiled sifting (numba), never for the default 10^5-bit blocks
        self._compiled_sift = link.postprocessing.block_size_bits >= FAST_MIN_BITS
        if self._compiled_sift:
            no_hugepage_advice()  # frames of several MiB per array, many per block

    def _reset(self, next_block_id: int) -> None:
        """Forget the partial sifted buffer and everything in flight on both pipes."""
        self.buffer.reset()
        self.classical.discard_pending()
        self.quantum.discard_pending()
        self.next_block_id = next_block_id

    async def _ask_resync(self, reason: str) -> None:
        """Best effort: tell the peer this end abandoned an exchange."""
        if self.classical.closed:
            return
        try:
            await self.classical.send(ResyncRequest(link_id=self.link_id, reason=reason[:200]))
        except ClassicalChannelError:
            logger.debug("link %s: resync request not sent", self.link_id, exc_info=True)

    @property
    def block_bits(self) -> int:
        return self.link.postprocessing.block_size_bits

    def _amplify(self, key: Bits, pa_seed: bytes, ell: int) -> bytes:
        t = toeplitz_bits(pa_seed, key.shape[0], ell)
        return pack(toeplitz_hash(key, t, ell))


class AliceModule(_Module):
    """Alice's QKD module: emulates the link, answers Cascade, sends tags and seeds."""

    async def sync(self, next_frame_id: int, peer_nonce: str, *, reason: str = "",
                   timeout_s: float = DEFAULT_PING_TIMEOUT_S) -> None:
        """Resynchronize with Bob: both ends drop partial buffers and in-flight blocks and
        continue with frame ``next_frame_id`` and this end's ``next_block_id``.

        Args:
            next_frame_id: the id of the next frame Alice will send.
            peer_nonce: Bob's boot nonce, as his last ping answered.
            reason: why (logged, carried on the wire).
            timeout_s: real seconds to wait for Bob's :class:`SyncAck`.

        Raises:
            ClassicalChannelError: Bob did not acknowledge (gone, timed out, or answered
                for another incarnation); the caller retries later.
        """
        self._reset(self.next_block_id)
        self.classical.peer_nonce = None
        assert self.classical.boot_nonce is not None, "serve_peer() before sync()"
        ack = await self.classical.request_peer(Sync(
            link_id=self.link_id, boot_nonce=self.classical.boot_nonce,
            next_frame_id=next_frame_id, next_block_id=self.next_block_id,
            reason=reason), timeout_s)
        if not isinstance(ack, SyncAck) or ack.next_block_id != self.next_block_id:
            raise ClassicalChannelError(f"link {self.link_id}: bad answer to sync: {ack.KIND}")
        if ack.boot_nonce != peer_nonce:
            raise ClassicalChannelError(f"link {self.link_id}: the peer restarted during sync")
        self.classical.peer_nonce = peer_nonce

    async def run_frame(self, frame_id: int, physics: LinkPhysics, n_pulses: int,
                        duration_s: float, on_block: BlockSink = _ignore_block) -> int:
        """Emulate and sift one frame; run every block that became due.

        Each block's outcome goes to ``on_block`` as soon as it is complete.

        Returns:
            How many blocks ran.

        Raises:
            ClassicalChannelError: the peer failed or went out of sync (buffers are
                reset; the runner counts the loss and resynchronizes).
        """
        try:
            # numpy releases the GIL: the frame draws run off the event loop so KMs and
            # the control plane in the same process keep answering promptly
            measured = measured_physics(self.link, physics)
            if measured is not None:
                alice, bob = await self.offload(emulate_measured_frame, measured, n_pulses,
                                                self.rng)
            else:
                alice, bob = await self.offload(emulate_frame, physics, n_pulses, self.rng)
            await self.quantum.send(QuantumFrame(
                link_id=self.link_id, frame_id=frame_id, n_pulses=n_pulses,
                detections=bob.detections, bases=pack(bob.bases), bits=pack(bob.bits)))
            req = await expect(self.classical, SiftRequest, frame_id, self.peer_timeout_s)
            sift, classes = sift_frame(alice.bases, unpack(req.bases, req.detections),
                                       alice.bits, alice.intensity_class, False,
                                       self.key_basis, self._compiled_sift)
            hi, lo = encode_classes(classes)
            detections = class_counts(alice.intensity_class)
            await self.classical.send(SiftReply(
                link_id=self.link_id, frame_id=frame_id, bases=pack(alice.bases),
                class_hi=hi, class_lo=lo, pulses=alice.pulses_per_class,
                detections=detections,
                test_bits=pack(sift.test_bits)))
            self.buffer.add(sift, None, n_pulses, duration_s)
            blocks = 0
            while self.buffer.size >= self.block_bits:
                await on_block(await self._block())
                blocks += 1
            return blocks
        except ClassicalChannelError:
            self.buffer.reset()
            raise

    async def _block(self) -> BlockOutcome:
        block_id = self.next_block_id
        self.next_block_id += 1
        rest, counts, _pulses, duration = self.buffer.take(self.block_bits)
        n = int(rest.shape[0])
        await self.classical.send(PeRequest(link_id=self.link_id, block_id=block_id,
                                            block_bits=n))
        pe = await expect(self.classical, PeResult, block_id, self.peer_timeout_s)
        if pe.test_sifted != counts.test:
            raise ClassicalChannelError(f"link {self.link_id}: test-basis counts differ")
        agreed = BlockCounts(key=counts.key, test=counts.test, test_errors=pe.test_errors)
        qber = agreed.test_qber
        measured = measured_physics(self.link)
        if measured is not None and qber is not None:  # report what Bob judged (MDI: e11)
            qber = measured.block_estimates(sum(pe.test_errors), sum(counts.test))[0]
        out = BlockOutcome(link_id=self.link_id, block_id=block_id, status="aborted_qber",
                           sifted_bits=n, duration_s=duration, qber=qber,
                           test_bits=sum(counts.test), reason=pe.reason)
        if pe.abort:
            return out
        leaked, out.cascade_rounds = await reconcile_alice(
            self.classical, self.link_id, block_id, rest, self.link.postprocessing,
            self.peer_timeout_s, self.offload)
        ell, bounds = _block_length(self.link, agreed, leaked)
        point, pa_seed = self.rng.bytes(16), self.rng.bytes(32)
        await self.classical.send(VerifyRequest(
            link_id=self.link_id, block_id=block_id, point=point,
            tag=polynomial_tag(rest, point), pa_seed=pa_seed,
            leaked_ec_bits=leaked, secret_bits=ell))
        vr = await expect(self.classical, VerifyResult, block_id, self.peer_timeout_s)
        out.leaked_ec_bits = leaked
        out.leaked_verify_bits = VERIFY_TAG_BITS
        out.corrected_bits = vr.corrected_bits
        out.bounds = bounds
        if not vr.ok:
            out.status = "verify_failed"
            out.reason = "verification failed at Bob"
            return out
        if ell <= 0:
            out.status = "aborted_no_key"
            out.reason = "secure length is zero"
            return out
        out.secret_bits = ell
        out.material = await self.offload(self._amplify, rest, pa_seed, ell)
        out.status = "delivered"
        return out


class BobModule(_Module):
    """Bob's QKD module: measures (receives his detection record), corrects, verifies."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.link.postprocessing.reconciliation == "ldpc":
            require("ldpc")  # fail at start, naming the extra, not at the first block
        self.frame_floor = 0  # frames below this id belong to an abandoned run
        self._pending: tuple[Sync, asyncio.Event] | None = None

    def request_sync(self, sync: Sync) -> asyncio.Event:
        """Ask the module to apply ``sync`` at its next receive; the event is set once it
        has (a newer request supersedes an unapplied one, whose event is set too)."""
        if self._pending is not None:
            self._pending[1].set()
        done = asyncio.Event()
        self._pending = (sync, done)
        self.classical.interrupt()
        self.quantum.interrupt()
        return done

    def _apply_sync(self) -> bool:
        if self._pending is None:
            return False
        sync, done = self._pending
        self._pending = None
        self._reset(sync.next_block_id)
        self.frame_floor = sync.next_frame_id
        self.classical.peer_nonce = sync.boot_nonce
        logger.info("link %s: resynchronized at block %d (%s)", self.link_id,
                    sync.next_block_id, sync.reason or "sync")
        done.set()
        return True

    async def run_frame(self, on_block: BlockSink = _ignore_block) -> int:
        """Wait for the next quantum frame, sift it, run every block that became due.

        Each block's outcome goes to ``on_block`` as soon as Bob has sent his verdict. A
        pending :meth:`request_sync` is applied instead (returns 0).

        Returns:
            How many blocks ran.

        Raises:
            ClassicalChannelError: the channel closed or the peer failed (Bob's buffer is
                reset and Alice is asked to resynchronize).
        """
        try:
            return await self._run_frame(on_block)
        except ChannelInterrupted:
            if self._apply_sync():
                return 0
            raise
        except ClassicalChannelError as exc:
            if self._apply_sync():  # the failure was the old run's; the new one starts now
                return 0
            self.buffer.reset()
            await self._ask_resync(str(exc))
            raise

    async def _run_frame(self, on_block: BlockSink) -> int:
        if self._apply_sync():
            return 0
        while True:
            frame = await self.quantum.receive(timeout_s=None)
            if not isinstance(frame, QuantumFrame):
                raise ClassicalChannelError(
                    f"link {self.link_id}: {frame.KIND} on quantum pipe")
            if frame.frame_id >= self.frame_floor:
                break
            logger.debug("link %s: dropping stale frame %d", self.link_id, frame.frame_id)
        try:
            bases = unpack(frame.bases, frame.detections)
            bits = unpack(frame.bits, frame.detections)
            await self.classical.send(SiftRequest(link_id=self.link_id, frame_id=frame.frame_id,
                                                  detections=frame.detections,
                                                  bases=frame.bases))
            rep = await expect(self.classical, SiftReply, frame.frame_id, self.peer_timeout_s)
            alice_bases = unpack(rep.bases, frame.detections)
            match = sift_mask(alice_bases, bases)
            classes = decode_classes(rep.class_hi, rep.class_lo, int(np.count_nonzero(match)))
            sift, _ = sift_frame(bases, alice_bases, bits, classes, True, self.key_basis,
                                 self._compiled_sift)
            alice_test = unpack(rep.test_bits, int(sift.test_bits.shape[0]))
            self.buffer.add(sift, alice_test != sift.test_bits, frame.n_pulses,
                            frame.n_pulses / self.link.repetition_rate_hz)
            blocks = 0
            while self.buffer.size >= self.block_bits:
                await on_block(await self._block())
                blocks += 1
            return blocks
        except ClassicalChannelError:
            self.buffer.reset()
            raise

    async def _block(self) -> BlockOutcome:
        block_id = self.next_block_id
        pe_req = await expect(self.classical, PeRequest, block_id, self.peer_timeout_s)
        self.next_block_id += 1
        rest, counts, _pulses, duration = self.buffer.take(self.block_bits)
        n = int(rest.shape[0])
        if pe_req.block_bits != n:
            raise ClassicalChannelError(f"link {self.link_id}: block sizes differ")
        pp = self.link.postprocessing
        qber = counts.test_qber
        cascade_qber = qber
        measured = measured_physics(self.link)
        if measured is not None and qber is not None:
            # the test basis of MDI/TF-QKD is not the key basis: judge the phase error,
            # size Cascade by the key basis's expected error (measured.py)
            qber, cascade_qber = measured.block_estimates(sum(counts.test_errors),
                                                          sum(counts.test))
        abort, reason = False, ""
        if qber is None:
            abort, reason = True, "no test-basis events in the block"
        elif qber > pp.qber_threshold:
            abort, reason = True, f"QBER {qber:.4f} above threshold {pp.qber_threshold:.4f}"
        await self.classical.send(PeResult(
            link_id=self.link_id, block_id=block_id, test_sifted=counts.test,
            test_errors=counts.test_errors, abort=abort, reason=reason))
        out = BlockOutcome(link_id=self.link_id, block_id=block_id, status="aborted_qber",
                           sifted_bits=n, duration_s=duration, qber=qber,
                           test_bits=sum(counts.test), reason=reason)
        if abort:
            return out
        assert cascade_qber is not None
        rec = await reconcile_bob(self.classical, self.link_id, block_id, rest, cascade_qber,
                                  self.rng.bytes(16), pp, self.cascade_schedule,
                                  self.peer_timeout_s, self.offload)
        out.cascade_rounds = rec.rounds
        leaked = rec.leaked_bits
        ell, bounds = _block_length(self.link, counts, leaked)
        vreq = await expect(self.classical, VerifyRequest, block_id, self.peer_timeout_s)
        ok = (polynomial_tag(rec.key, vreq.point) == vreq.tag and vreq.leaked_ec_bits == leaked
              and vreq.secret_bits == ell)
        # amplify before the verdict goes out: once Alice can read "ok", Bob's block is
        # ready for his sink with no further work (a crash there cannot split the block)
        material = await self.offload(self._amplify, rec.key, vreq.pa_seed, ell) \
            if ok and ell > 0 else None
        await self.classical.send(VerifyResult(link_id=self.link_id, block_id=block_id, ok=ok,
                                               secret_bits=ell,
                                               corrected_bits=rec.corrected_bits))
        out.leaked_ec_bits = leaked
        out.leaked_verify_bits = VERIFY_TAG_BITS
        out.corrected_bits = rec.corrected_bits
        out.bounds = bounds
        if not ok:
            out.status = "verify_failed"
            out.reason = "tags, leakage or secure lengths differ"
            return out
        if ell <= 0:
            out.status = "aborted_no_key"
            out.reason = "secure length is zero"
            return out
        out.secret_bits = ell
        out.material = material
        out.status = "delivered"
        return out
