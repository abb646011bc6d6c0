"""ETSI 014 dec_keys with acknowledgement (keyplane extension, opt-in; issue #14).

Plain dec_keys spends a key durably before answering: if the answer never reaches the
slave application (KM killed after its commit, client timeout), the retry gets 400 and
the key is held by the master only. With ``keyplane_ack`` the keys are handed out without
being spent: they stay ``ready``, sealed in the store, for the slave SAE they were made
for, which may fetch them again with the same key_IDs until it confirms them
(``keyplane_confirm``, spent durably before the call's own keys are served). A key never
confirmed is spent ``etsi014_ack_hold_s`` after it was first handed out.

The pure part is :func:`hold` / :func:`due` on :attr:`Stream.acked014` (key_ID -> the wall
time the hold ends: a restarted KM, maybe on another host, has no other common time). The
map is part of the session's row (``Stream.data``), written with the keys' rows before
their first hand-out, so a restart keeps each hold's end: the restarted KM re-arms them
(:meth:`_Ack014._rearm_014`), and a key whose hold ended while the KM was down is spent at
once. A key handed out but unconfirmed is still held for its slave (same bytes on
re-fetch) and may be confirmed (docs/api/etsi014.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from keyplane.errors import AuthenticationFailed, KeyNotFound
from keyplane.keymanager.core import Stream
from keyplane.keymanager.production import _Production
from keyplane.keymanager.session import SessionEvent
from keyplane.keymanager.vault import HeldKey

__all__ = ["due", "hold"]


def hold(s: Stream, key_ids: Iterable[str], wall: float, hold_s: float) -> list[str]:
    """Record keys handed out with acknowledgement at ``wall``; the ones handed out for the
    first time (a re-fetch keeps the first deadline: the hold is not extended by fetching)."""
    first = [k for k in key_ids if k not in s.acked014]
    for k in first:
        s.acked014[k] = wall + hold_s
    return first


def due(s: Stream, wall: float) -> list[str]:
    """The held keys of ``s`` whose hold has ended at ``wall`` (to be spent)."""
    return [k for k, t in s.acked014.items() if t <= wall]


class _Ack014(_Production):
    """The KM shell's part of dec_keys with acknowledgement."""

    def _keys_for(self, slave_sae: str, master_sae: str, key_ids: Sequence[str]
                  ) -> list[HeldKey]:
        """The named keys, each made for this pair (ready or recently delivered).

        Raises:
            AuthenticationFailed: a key was made for another pair (401, as dec_keys).
            KeyNotFound: a key is unknown here (400).
        """
        out = []
        for key_id in key_ids:
            k = self.vault.by_id.get(key_id)
            if k is not None and (k.sae_id != slave_sae or k.peer_sae != master_sae):
                raise AuthenticationFailed(
                    f"{slave_sae} is not entitled to the keys it asked for")
            if k is None:
                raise KeyNotFound("one or more keys specified are not found on KME")
            out.append(k)
        return out

    async def _spend_014(self, keys: list[HeldKey], *, announce: bool) -> dict[str, bytes]:
        """Mark ``keys`` delivered durably (per session, as a key request); their bytes."""
        first = keys[0].session_id if keys else ""
        if all(k.session_id == first for k in keys):  # a bulk request: one batch's session
            by_session = {first: keys} if keys else {}
        else:
            by_session = {}
            for k in keys:
                by_session.setdefault(k.session_id, []).append(k)
        out: dict[str, bytes] = {}
        for sid, ks in by_session.items():
            s = self.core.streams[sid]
            busy = s.machine.can(SessionEvent.key_request)
            if busy:
                self._apply(s, SessionEvent.key_request)
            try:
                ids = [k.key_id for k in ks]
                out.update(zip(ids, await self._deliver(s, ks, announce=announce),
                               strict=True))
                if s.acked014:  # keys handed out with acknowledgement before: held no more
                    for kid in ids:
                        s.acked014.pop(kid, None)
            finally:
                if busy and s.machine.can(SessionEvent.key_done):
                    self._apply(s, SessionEvent.key_done)
        return out

    async def _confirm_014(self, slave_sae: str, master_sae: str, key_ids: Sequence[str]
                           ) -> None:
        """Spend, durably, keys the slave received with acknowledgement.

        A key already spent (confirmed twice, fetched without acknowledgement, or expired)
        changes nothing, nor does a key_ID this KM does not know: a spent key's row is gone
        once its batch is spent, and after a restart the KM cannot tell a confirmation
        repeated (its answer lost) from a key_ID never made; refusing it would fail the
        retry whose keys are the point. A key held for this slave may be confirmed even if
        this process did not hand it out (a restart in between; only the slave can spend
        its own key).

        Raises:
            AuthenticationFailed: a key was made for another pair (nothing is spent).
            StoreError: the confirmation could not be written (the keys stay held).
        """
        known = [i for i in sorted(set(key_ids)) if i in self.vault.by_id]
        keys = self._keys_for(slave_sae, master_sae, known)
        todo = [k for k in keys if k.state == "ready"]
        if todo:
            await self._spend_014(todo, announce=False)

    async def _hand_014(self, keys: list[HeldKey]) -> dict[str, bytes]:
        """The bytes of ready keys, left held for their slave until it confirms them.

        Durable before delivered holds here too: each key's row (state ``ready``, sealed
        bytes) and, for a first hand-out, its hold's end (the session's row) are committed
        before the bytes leave. Each key is announced delivered once, at its first
        hand-out, and its hold's end is armed then.

        Raises:
            StoreError: the rows could not be written; nothing is handed out.
        """
        gen = 0
        for k in keys:
            gen = self.vault.touch(k)
        wall, hold_s = self._clock.wall(), self.settings.etsi014_ack_hold_s
        by_session: dict[str, list[HeldKey]] = {}
        for k in keys:
            by_session.setdefault(k.session_id, []).append(k)
        firsts: dict[str, set[str]] = {}
        for sid, ks in by_session.items():
            s = self.core.streams[sid]
            firsts[sid] = set(hold(s, (k.key_id for k in ks), wall, hold_s))
            if firsts[sid]:
                gen = self._rows.put(sid, s.machine.state.value, s.data(), self._clock.now())
        try:
            await self.journal.flushed(gen)
        except BaseException:
            for sid, first in firsts.items():  # not handed out: no hold began
                for kid in first:
                    self.core.streams[sid].acked014.pop(kid, None)
            raise
        for sid, ks in by_session.items():
            s = self.core.streams[sid]
            announced = [k for k in ks if k.key_id in firsts[sid]]
            if announced:
                self._announce_delivered(s, announced, [k.material or b"" for k in announced])
                self._spawn(self._expire_014(s, hold_s), f"km-ack014-{sid}")
        return {k.key_id: k.material or b"" for k in keys}

    def _rearm_014(self) -> None:
        """KM start: arm the hold ends the session rows kept (keys no longer held, spent
        or gone, leave the map); a hold that ended while the KM was down ends now."""
        wall = self._clock.wall()
        for s in self.core.streams.values():
            for kid in list(s.acked014):
                k = self.vault.by_id.get(kid)
                if k is None or k.state != "ready":
                    s.acked014.pop(kid, None)
            for end in sorted(set(s.acked014.values())):
                self._spawn(self._expire_014(s, max(0.0, end - wall)),
                            f"km-ack014-{s.session_id}")

    async def _expire_014(self, s: Stream, delay_s: float) -> None:
        """Spend the keys of ``s`` whose hold ended (``delay_s`` from now: one hold)."""
        await self._clock.sleep(delay_s)
        ids = due(s, self._clock.wall())
        keys = [k for k in (self.vault.by_id.get(i) for i in ids)
                if k is not None and k.state == "ready"]
        for i in ids:  # spent or gone already; the rest leave the map when spent
            k = self.vault.by_id.get(i)
            if k is None or k.state != "ready":
                s.acked014.pop(i, None)
        if keys and self.core.streams.get(s.session_id) is s:
            await self._spend_014(keys, announce=False)
