"""The paper's proof of concept as a scenario: SAE pairs open ETSI 004 streams and fetch keys.

Each pair behaves like two real applications: they agree on a Key_stream_ID out of band
(a fresh UUID, which ETSI 004 lets the caller supply), call OPEN_CONNECT at their own KMs in
parallel, then GET_KEY the same indexes and compare what they got. A GET_KEY answered
"insufficient key", "no QKD connection" or "timeout" (status 2, 4 or 6) is retried after a
short back-off, as an application would, until the pair's stall bound.

The scenario talks to KMs through :class:`StreamEndpoint`: in the embedded demo that is the
KM's :class:`~keyplane.keymanager.interface.ApplicationService` called in process; in the
distributed demo it is the ETSI 004 client over HTTPS with mutual TLS.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Protocol

from keyplane.api.errors import etsi004_status, map_exception
from keyplane.api.etsi004.status import Etsi004Status
from keyplane.errors import (
    InsufficientKeyMaterial,
    KeyNotFound,
    KeyplaneError,
    KeyWaitExpired,
    PeerNotConnected,
    QosNotMet,
)
from keyplane.keymanager.interface import ApplicationService, Caller
from keyplane.messages import Qos

__all__ = ["PairResult", "SaePair", "ServiceEndpoint", "StreamEndpoint", "run_pair"]


class StreamEndpoint(Protocol):
    """One application's view of its KM's ETSI 004 interface."""

    sae_id: str

    async def open(self, destination: str, qos: Qos, key_stream_id: str) -> str:
        """OPEN_CONNECT; returns the Key_stream_ID the KM confirmed."""
        ...

    async def get_key(self, key_stream_id: str, index: int) -> tuple[bytes, dict[str, Any]]:
        """GET_KEY at ``index``: (key bytes, metadata). Raises InsufficientKeyMaterial on
        status 2, 4 or 6 (the index is still the application's to fetch)."""
        ...

    async def close(self, key_stream_id: str) -> None:
        """CLOSE."""
        ...


@dataclass
class ServiceEndpoint:
    """A :class:`StreamEndpoint` that calls a KM in this process (embedded demo)."""

    sae_id: str
    km: ApplicationService
    caller: Caller
    received: dict[str, int] = field(default_factory=dict)
    """Per stream, the last index received and not yet confirmed (ETSI 004 GET_KEY with
    acknowledgement: confirmed with the next GET_KEY, so a KM that dies before its answer
    arrives hands the same chunk again instead of losing it)."""

    async def open(self, destination: str, qos: Qos, key_stream_id: str) -> str:
        res = await self.km.open_connect(self.caller, self.sae_id, destination, qos,
                                         key_stream_id)
        return res.key_stream_id

    async def get_key(self, key_stream_id: str, index: int) -> tuple[bytes, dict[str, Any]]:
        last = self.received.get(key_stream_id)
        try:
            res = await self.km.get_key(self.caller, key_stream_id, index, acknowledge=True,
                                        confirm=() if last is None else (last,))
        except (KeyplaneError, TimeoutError) as exc:
            # what an ETSI 004 application sees is the status (the distributed demo's
            # client): 2, 4 and 6 (no key yet, no path yet, none within the timeout, e.g. a
            # relay that waited out a reroute) leave the index to fetch again
            if not isinstance(exc, InsufficientKeyMaterial) and _worth_retrying(exc):
                raise InsufficientKeyMaterial(str(exc)) from exc
            raise
        self.received[key_stream_id] = index
        return res.key, dict(res.metadata)

    async def close(self, key_stream_id: str) -> None:
        await self.km.close_stream(self.caller, key_stream_id)


RETRY_STATUSES = frozenset({Etsi004Status.GK_INSUFFICIENT_KEY_AVAILABLE,
                            Etsi004Status.NO_QKD_CONNECTION_AVAILABLE,
                            Etsi004Status.TIMEOUT_ERROR})
"""GET_KEY statuses an application asks again after (both demo endpoints)."""


def _worth_retrying(exc: Exception) -> bool:
    """Whether GET_KEY answers ``exc`` with status 2, 4 or 6, and the index may still come
    (not KeyNotFound, also status 2: the index is gone at this end, which the pair
    handles)."""
    if isinstance(exc, KeyNotFound):
        return False
    mapping = map_exception(exc)
    return mapping is not None and etsi004_status(mapping, "get_key") in RETRY_STATUSES


@dataclass(frozen=True)
class SaePair:
    """Two applications that want a shared key stream."""

    a: str
    b: str

    @property
    def label(self) -> str:
        """``"sae2-sae3"``."""
        return f"{self.a}-{self.b}"


@dataclass
class PairResult:
    """What one pair observed (no key material: only digests and counts)."""

    pair: SaePair
    key_stream_id: str = ""
    keys_delivered: int = 0
    keys_matched: int = 0
    first_key_s: float | None = None
    opened_s: float | None = None
    status: str = "pending"
    error: str = ""
    key_ids: list[str] = field(default_factory=list)
    fingerprints: list[str] = field(default_factory=list)  # SHA-256 prefix of each key
    # indexes one end received and the other end's KM reported gone (ETSI 004 GET_KEY has
    # no acknowledgement: a KM that dies after marking a key delivered, before its answer
    # reaches the application, has handed it to nobody; see docs/poc.md)
    lost_indexes: list[int] = field(default_factory=list)
    reopened: int = 0
    """Times the pair opened a new stream because its stream ended under it (GET_KEY
    status 3 at an end: closed by a KM or Admission Control); each index only one end got
    before that is in ``lost_indexes``."""
    ended_streams: list[str] = field(default_factory=list)
    """The Key_stream_IDs that ended under the pair (``key_stream_id`` is the last one)."""
    open_attempts: int = 0
    """OPEN_CONNECTs at both ends it took: a refusal while the control plane has not yet seen
    the links make key (QoS cannot be met) is retried, as an application would."""
    keying: asyncio.Event = field(default_factory=asyncio.Event, repr=False, compare=False)
    """Set once both ends got their first key, or the pair ended without one: from then on
    the session is past its set-up (a fault injected now hits key exchange, not set-up)."""

    @property
    def all_matched(self) -> bool:
        """Both ends got identical keys for every index fetched."""
        return self.keys_delivered > 0 and self.keys_matched == self.keys_delivered


async def _get(ep: StreamEndpoint, sid: str, index: int, deadline: float
               ) -> tuple[bytes, dict[str, Any]]:
    delay = 0.02
    while True:
        try:
            return await ep.get_key(sid, index)
        except (InsufficientKeyMaterial, KeyWaitExpired) as exc:
            # no key yet, or none within the request's timeout (ETSI 004 status 2 / 6): the
            # index is still this application's to fetch; a loaded machine makes link key
            # slowly, so ask again until the pair's own stall bound
            if time.monotonic() > deadline:
                cause = exc.__cause__  # the KM's own error, when the endpoint wrapped it
                if isinstance(cause, KeyplaneError | TimeoutError):
                    raise cause from cause.__cause__  # its own chain kept
                raise
            await asyncio.sleep(delay)
            delay = min(0.25, delay * 1.5)


async def _open_both(pair: SaePair, a: StreamEndpoint, b: StreamEndpoint, qos: Qos,
                     deadline: float, res: PairResult) -> str:
    """OPEN_CONNECT at both ends with one Key_stream_ID; a refusal (ETSI 004 status 7: e.g.
    no route yet, the Routing Element has not seen the links make key) is retried with a new
    id, backing off, until ``deadline``."""
    delay = 0.25
    while True:
        sid = str(uuid.uuid4())
        res.open_attempts += 1
        got = await asyncio.gather(a.open(pair.b, qos, sid), b.open(pair.a, qos, sid),
                                   return_exceptions=True)
        for g in got:
            if isinstance(g, BaseException) and not isinstance(g, QosNotMet):
                raise g
        refused = [g for g in got if isinstance(g, QosNotMet)]
        if not refused:
            sid_a, sid_b = got
            assert isinstance(sid_a, str) and isinstance(sid_b, str)
            if sid_a != sid_b:
                raise KeyplaneError(f"the two ends got different Key_stream_IDs: {sid_a} "
                                    f"{sid_b}")
            return sid_a
        if time.monotonic() + delay > deadline:
            raise refused[0]
        await asyncio.sleep(delay)
        delay = min(2.0, delay * 2)


async def _close_quietly(ep: StreamEndpoint, sid: str) -> None:
    """CLOSE a stream that ended anyway (idempotent at the KM; a failure changes nothing)."""
    try:
        await ep.close(sid)
    except KeyplaneError:
        pass


async def run_pair(pair: SaePair, a: StreamEndpoint, b: StreamEndpoint, *, keys: int = 8,
                   chunk_bytes: int = 32, interval_s: float = 0.0, timeout_s: float = 30.0,
                   stall_s: float | None = None, result: PairResult | None = None,
                   t0: float | None = None, reopen_limit: int = 3) -> PairResult:
    """Open the stream at both ends, fetch ``keys`` chunks at each, compare, close.

    Args:
        timeout_s: the applications' wait bound (ETSI 004 ``Timeout``), and how long the
            pair may go without progress unless ``stall_s`` says otherwise.
        stall_s: how long the pair may go without progress (opening the stream, then
            each key): a bound from the last key, not from the start, so a run that has to
            outlast a fault (a KM killed and restarted on a loaded machine) is not cut
            short by the time its earlier keys took.
        result: updated in place as the run goes, for a live view.
        reopen_limit: how many times the pair opens a new stream when its stream ends
            under it (GET_KEY status 3, "peer not connected": the KM ended it). ETSI 004
            V2.1.1 gives no GET_KEY after that status; an application opens a stream
            again, and the pair agrees a new Key_stream_ID out of band as it did first
            (a key only one end received before the end is dropped, ``lost_indexes``).
    """
    res = result or PairResult(pair)
    t0 = time.monotonic() if t0 is None else t0
    qos = Qos(key_chunk_size=chunk_bytes, timeout_ms=int(timeout_s * 1000), max_bps=0)
    stall_s = timeout_s if stall_s is None else stall_s
    deadline = time.monotonic() + stall_s
    try:
        res.status = "opening"
        sid_a = sid_b = await _open_both(pair, a, b, qos, deadline, res)
        res.key_stream_id = sid_a
        res.opened_s = time.monotonic() - t0
        res.status = "operative"
        i = -1
        while res.keys_delivered < keys:
            i += 1
            got = await asyncio.gather(_get(a, sid_a, i, deadline), _get(b, sid_b, i, deadline),
                                       return_exceptions=True)
            ended = [g for g in got if isinstance(g, PeerNotConnected)]
            if ended and res.reopened < reopen_limit and all(
                    g in ended or not isinstance(g, BaseException) for g in got):
                # the stream ended under the pair: open a new one and carry on
                if len(ended) < len(got):
                    res.lost_indexes.append(i)  # one end got it, the other never will
                res.reopened += 1
                res.ended_streams.append(sid_a)
                res.status = "reopening"
                await _close_quietly(a, sid_a)
                await _close_quietly(b, sid_b)
                sid_a = sid_b = await _open_both(pair, a, b, qos, deadline, res)
                res.key_stream_id = sid_a
                res.status = "operative"
                i = -1
                continue
            gone = [g for g in got if isinstance(g, KeyNotFound)]
            if len(gone) == 1 and not res.lost_indexes and not any(
                    isinstance(g, BaseException) and g not in gone for g in got):
                res.lost_indexes.append(i)  # delivered into a crash at one end: skip it
                continue
            for g in got:
                if isinstance(g, BaseException):
                    raise g
            (ka, ma), (kb, mb) = got  # type: ignore[misc]
            res.keys_delivered += 1
            deadline = time.monotonic() + stall_s
            if ka == kb and ma.get("key_ID") == mb.get("key_ID"):
                res.keys_matched += 1
            if res.first_key_s is None:
                res.first_key_s = time.monotonic() - t0
                res.keying.set()
            res.key_ids.append(str(ma.get("key_ID", "")))
            res.fingerprints.append(hashlib.sha256(ka).hexdigest()[:16])
            if interval_s:
                await asyncio.sleep(interval_s)
        res.status = "closing"
        await a.close(sid_a)
        await b.close(sid_b)
        res.status = "closed"
    except (KeyplaneError, TimeoutError) as exc:
        res.status = "failed"
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        res.keying.set()
    return res
