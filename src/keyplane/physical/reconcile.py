"""Reconciliation shells: Cascade or LDPC between the two QKD modules of a block.

Bob (the corrector) picks the reconciler from his link's ``postprocessing.reconciliation``
and drives; Alice follows whatever Bob's first message asks for (a
:class:`~keyplane.physical.wire.CascadeQuery` or an
:class:`~keyplane.physical.wire.LdpcQuery`), so both ends never disagree on the method.
LDPC frames that BP cannot decode after their extensions go to Cascade, concatenated, in
the same block: the leakage of both is added. The pure cores are
:mod:`.cascade` and :mod:`.reconcile_ldpc`; this module only carries their messages.
:mod:`.reconcile_ldpc` is imported at the first LDPC block, not here: it needs
``scipy.sparse``, about 0.3 s of CPU in every link worker's start before its first frame.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from keyplane.bus.codec import Message
from keyplane.config import PostProcessing
from keyplane.errors import ClassicalChannelError
from keyplane.physical.bits import Bits, pack, unpack
from keyplane.physical.cascade import (
    CascadeAlice,
    CascadeBob,
    ParityAnswer,
    ParityQuery,
    block_sizes,
)
from keyplane.physical.channel import ClassicalChannel
from keyplane.physical.wire import (
    CascadeAnswer,
    CascadeQuery,
    LdpcAnswer,
    LdpcQuery,
    decode_i32,
    encode_i32,
)

if TYPE_CHECKING:
    from keyplane.physical.reconcile_ldpc import SyndromeAnswer

__all__ = ["Offload", "Reconciled", "expect", "reconcile_alice", "reconcile_bob"]

logger = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)
Offload = Callable[..., Awaitable[Any]]


async def expect(channel: ClassicalChannel, cls: type[M] | tuple[type[M], ...], ident: int,
                 timeout_s: float | None) -> M:
    """The next message, which must be ``cls`` for frame/block ``ident``; older leftovers
    of an abandoned exchange are dropped."""
    while True:
        msg = await channel.receive(timeout_s)
        got = getattr(msg, "block_id", getattr(msg, "frame_id", None))
        if isinstance(msg, cls) and got == ident:
            return msg
        if isinstance(got, int) and got < ident:
            logger.debug("link %s: dropping stale %s for %s", channel.link_id, msg.KIND, got)
            continue
        kinds = "/".join(c.KIND for c in (cls if isinstance(cls, tuple) else (cls,)))
        raise ClassicalChannelError(
            f"link {channel.link_id}: expected {kinds} for {ident}, got {msg.KIND} for {got}")


@dataclass(slots=True)
class Reconciled:
    """Bob's outcome: his corrected key and what the exchange disclosed."""

    key: Bits
    leaked_bits: int
    corrected_bits: int
    rounds: int
    ldpc_fallback_frames: int = 0


def _peer_error(link_id: str, exc: ValueError) -> ClassicalChannelError:
    return ClassicalChannelError(f"link {link_id}: reconciliation out of step: {exc}")


async def _cascade_alice(channel: ClassicalChannel, link_id: str, block_id: int, key: Bits,
                         first: CascadeQuery, timeout_s: float | None) -> tuple[int, int]:
    cascade = CascadeAlice(key)
    q = first
    while not q.last:
        try:
            ans = cascade.answer(ParityQuery(
                round=q.round, seed=q.seed, new_pass=q.new_pass,
                passes=np.frombuffer(q.passes, dtype=np.uint8),
                starts=decode_i32(q.starts), ends=decode_i32(q.ends)))
        except (ValueError, KeyError, IndexError) as exc:
            raise _peer_error(link_id, ValueError(str(exc))) from exc
        await channel.send(CascadeAnswer(
            link_id=link_id, block_id=block_id, round=q.round,
            n_top=int(ans.top_parities.shape[0]), top=pack(ans.top_parities),
            n_parities=int(ans.parities.shape[0]), parities=pack(ans.parities)))
        q = await expect(channel, CascadeQuery, block_id, timeout_s)
    return cascade.leaked_bits, q.round


async def reconcile_alice(channel: ClassicalChannel, link_id: str, block_id: int, key: Bits,
                          pp: PostProcessing, timeout_s: float | None,
                          offload: Offload) -> tuple[int, int]:
    """Alice's side of one block: answer Bob until he is done.

    Returns:
        (bits disclosed, rounds).

    Raises:
        ClassicalChannelError: the peer failed or asked for something inconsistent.
    """
    first: CascadeQuery | LdpcQuery = await expect(
        channel, (CascadeQuery, LdpcQuery), block_id, timeout_s)
    if isinstance(first, CascadeQuery):
        return await _cascade_alice(channel, link_id, block_id, key, first, timeout_s)
    # imported only for an LDPC block: scipy.sparse costs a worker 0.3 s of CPU at start
    from keyplane.physical.reconcile_ldpc import LdpcAlice, SyndromeQuery

    ldpc = LdpcAlice(key, pp.ldpc_frame_bits, pp.ldpc_max_extensions)
    q = first
    while not q.last:
        try:
            ans: SyndromeAnswer = await offload(ldpc.answer, SyndromeQuery(
                round=q.round, base=decode_i32(q.base), rows=decode_i32(q.rows)))
        except ValueError as exc:
            raise _peer_error(link_id, exc) from exc
        await channel.send(LdpcAnswer(link_id=link_id, block_id=block_id, round=q.round,
                                      n_bits=int(ans.bits.shape[0]), bits=pack(ans.bits)))
        q = await expect(channel, LdpcQuery, block_id, timeout_s)
    leaked, rounds = ldpc.leaked_bits, q.round
    mask = unpack(q.fallback, ldpc.frames).astype(bool) if q.fallback else None
    if mask is None or not mask.any():
        return leaked, rounds
    cq = await expect(channel, CascadeQuery, block_id, timeout_s)
    more, extra = await _cascade_alice(channel, link_id, block_id, ldpc.fallback_key(mask),
                                       cq, timeout_s)
    return leaked + more, rounds + extra


async def _cascade_bob(channel: ClassicalChannel, link_id: str, block_id: int, key: Bits,
                       qber: float, seed: bytes, schedule: str,
                       timeout_s: float | None) -> Reconciled:
    bob = CascadeBob(key, seed, block_sizes(schedule, qber, int(key.shape[0])))
    query = bob.start()
    while query is not None:
        await channel.send(CascadeQuery(
            link_id=link_id, block_id=block_id, round=query.round, seed=query.seed,
            new_pass=query.new_pass, passes=query.passes.tobytes(),
            starts=encode_i32(query.starts), ends=encode_i32(query.ends)))
        ans = await expect(channel, CascadeAnswer, block_id, timeout_s)
        try:
            query = bob.on_answer(ParityAnswer(
                round=ans.round, top_parities=unpack(ans.top, ans.n_top),
                parities=unpack(ans.parities, ans.n_parities)))
        except ValueError as exc:
            raise _peer_error(link_id, exc) from exc
    await channel.send(CascadeQuery(link_id=link_id, block_id=block_id,
                                    round=bob.stats.rounds, seed=b"", last=True))
    return Reconciled(key=bob.key, leaked_bits=bob.stats.leaked_bits,
                      corrected_bits=bob.stats.corrected_bits, rounds=bob.stats.rounds)


async def reconcile_bob(channel: ClassicalChannel, link_id: str, block_id: int, key: Bits,
                        qber: float, seed: bytes, pp: PostProcessing, schedule: str,
                        timeout_s: float | None, offload: Offload) -> Reconciled:
    """Bob's side of one block with the link's reconciler (``pp.reconciliation``).

    Raises:
        ClassicalChannelError: the peer failed or answered out of step.
    """
    if pp.reconciliation == "cascade":
        return await _cascade_bob(channel, link_id, block_id, key, qber, seed, schedule,
                                  timeout_s)
    from keyplane.physical.reconcile_ldpc import LdpcBob, SyndromeAnswer

    bob = LdpcBob(key, qber, pp.ldpc_frame_bits, pp.ldpc_start_efficiency,
                  pp.ldpc_max_extensions)
    query = bob.start()
    while query is not None:
        await channel.send(LdpcQuery(link_id=link_id, block_id=block_id, round=query.round,
                                     base=encode_i32(query.base),
                                     rows=encode_i32(query.rows)))
        ans = await expect(channel, LdpcAnswer, block_id, timeout_s)
        try:
            # BP decoding is the heavy part: off the event loop on the real clock
            query = await offload(bob.on_answer, SyndromeAnswer(
                round=ans.round, bits=unpack(ans.bits, ans.n_bits)))
        except ValueError as exc:
            raise _peer_error(link_id, exc) from exc
    await channel.send(LdpcQuery(link_id=link_id, block_id=block_id, round=bob.stats.rounds,
                                 last=True, fallback=pack(bob.fallback.view(np.uint8))))
    st = bob.stats
    if not bob.fallback.any():
        return Reconciled(key=bob.key, leaked_bits=st.leaked_bits,
                          corrected_bits=st.corrected_bits, rounds=st.rounds)
    logger.info("link %s: block %d: %d LDPC frame(s) to Cascade", link_id, block_id,
                st.fallback_frames)
    rest = await _cascade_bob(channel, link_id, block_id, bob.fallback_key(), qber, seed,
                              schedule, timeout_s)
    bob.put_fallback(rest.key)
    return Reconciled(key=bob.key, leaked_bits=st.leaked_bits + rest.leaked_bits,
                      corrected_bits=st.corrected_bits + rest.corrected_bits,
                      rounds=st.rounds + rest.rounds, ldpc_fallback_frames=st.fallback_frames)
