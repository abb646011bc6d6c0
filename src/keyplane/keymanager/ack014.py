"""ETSI 014 dec_keys with acknowledgement (keyplane extension, opt-in; issue #14).

Plain dec_keys spends a key durably before answering: if the answer never reaches the
slave application (KM killed after its commit, client timeout), the retry gets 400 and
the key is held by the master only. With ``keyplane_ack`` the keys are handed out without
being spent: they stay ``ready``, sealed in the store, for the slave SAE they were made
for, which may fetch them again with the same key_IDs until it confirms them
(``keyplane_confirm``, spent durably before the call's own keys are served). A key never
confirmed is spent ``etsi014_ack_hold_s`` after it was first handed out.

The pure part is :func:`hold` / :func:`due` on :attr:`Stream.acked014` (key_ID -> the time
the hold ends). That map is memory only, as ETSI 004's ``Stream.unconfirmed``: the keys
themselves are durable rows, so after a restart a key handed out but unconfirmed is still
held for its slave (same bytes on re-fetch) and may be confirmed; its hold clock starts
again at its next acknowledged fetch (docs/api/etsi014.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from keyplane.errors import AuthenticationFailed, KeyNotFound
from keyplane.keymanager.core import Stream
from keyplane.keymanager.production import _Production
from keyplane.keymanager.session import SessionEvent
from keyplane.keymanager.vault import HeldKey

__all__ = ["due", "hold"]


def hold(s: Stream, key_ids: Iterable[str], now: float, hold_s: float) -> list[str]:
    """Record keys handed out with acknowledgement; the ones handed out for the first time
    (a re-fetch keeps the first deadline: the hold is not extended by fetching)."""
    first = [k for k in key_ids if k not in s.acked014]
    for k in first:
        s.acked014[k] = now + hold_s
    return first


def due(s: Stream, now: float) -> list[str]:
    """The held keys of ``s`` whose hold has ended (to be spent)."""
    return [k for k, t in s.acked014.items() if t <= now]


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
        by_session: dict[str, list[HeldKey]] = {}
        for k in keys:
            by_session.setdefault(k.session_id, []).append(k)
        out: dict[str, bytes] = {}
        for sid, ks in by_session.items():
            s = self.core.streams[sid]
            busy = s.machine.can(SessionEvent.key_request)
            if busy:
                self._apply(s, SessionEvent.key_request)
            try:
                for k, m in zip(ks, await self._deliver(s, ks, announce=announce), strict=True):
                    out[k.key_id] = m
                    s.acked014.pop(k.key_id, None)
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
        bytes) is committed before the bytes leave. Each key is announced delivered once,
        at its first hand-out, and its hold's end is armed then.

        Raises:
            StoreError: the rows could not be written; nothing is handed out.
        """
        gen = 0
        for k in keys:
            gen = self.vault.touch(k)
        await self.journal.flushed(gen)
        now, hold_s = self._clock.now(), self.settings.etsi014_ack_hold_s
        by_session: dict[str, list[HeldKey]] = {}
        for k in keys:
            by_session.setdefault(k.session_id, []).append(k)
        for sid, ks in by_session.items():
            s = self.core.streams[sid]
            first = set(hold(s, (k.key_id for k in ks), now, hold_s))
            announced = [k for k in ks if k.key_id in first]
            if announced:
                self._announce_delivered(s, announced, [k.material or b"" for k in announced])
                self._spawn(self._expire_014(s), f"km-ack014-{sid}")
        return {k.key_id: k.material or b"" for k in keys}

    async def _expire_014(self, s: Stream) -> None:
        """Spend the keys of ``s`` whose hold ended (after ``etsi014_ack_hold_s``)."""
        await self._clock.sleep(self.settings.etsi014_ack_hold_s)
        ids = due(s, self._clock.now())
        keys = [k for k in (self.vault.by_id.get(i) for i in ids)
                if k is not None and k.state == "ready"]
        for i in ids:  # spent or gone already; the rest leave the map when spent
            k = self.vault.by_id.get(i)
            if k is None or k.state != "ready":
                s.acked014.pop(i, None)
        if keys and self.core.streams.get(s.session_id) is s:
            await self._spend_014(keys, announce=False)
