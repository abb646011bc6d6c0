"""Who gets scarce link key: weighted shares of each link's key stream (pure core, #17.1).

Every frame a KM sends over a quantum link pads with that link's key (its send half,
:mod:`~keyplane.keymanager.keystore`). When the link makes less key than the sessions crossing
it ask for, :class:`LinkShares` decides who gets it. One instance per link (send direction) at
each KM; the shell (:mod:`~keyplane.keymanager.shell`) asks it before every
:meth:`LinkKeyStore.take_send <keyplane.keymanager.keystore.LinkKeyStore.take_send>` and tells it
whenever the link's sendable key changes. Events and ``now`` in, decisions out: nothing here
sleeps, awaits or touches the store.

The rule (weighted shares, not strict priority; docs/keymanager.md says why):

* **Flows.** A flow is one session's traffic on this link; its weight is
  ``priority + 1`` (SessionConfig's priority 0-7: weights 1-8). A flow exists from its first
  request and is forgotten when its session ends or after ``idle_s`` without a request and
  without debt.
* **Supply is split on arrival.** Each time the link's sendable key rises by ``delta`` bytes,
  ``delta`` is shared among the flows by weight and credited to them, each credit capped at
  ``cap_bytes``; what no flow may take (no flows yet, or caps reached) goes to a common
  ``pool``. So under sustained contention each session receives exactly its weighted share of
  what the link makes, whatever the block size or the timing of requests: the share is a
  property of the split, not of who asked first.
* **A request is served** from its flow's credit, then from the pool, as soon as the two
  cover it; otherwise it waits. Waiters are looked at again on every supply in priority order
  (higher first, then older), first fit, so no request waits while key it may use is there.
  Urgent requests (the small confirmation and demand frames a relay sends back, whose loss
  would waste the key already spent forward) may also use other flows' credit, but only as a
  **loan**: what they take from other flows is the urgent flow's debt, at most ``debt_bytes``,
  repaid from its own later shares (the repayment goes to the flows not in debt). At its
  deadline an urgent request may borrow a quarter of the bound more (a late loan) rather than
  expire: a dropped confirmation wastes the forward key of the frame it confirms and fails
  the request, a late one costs 32 bytes, and the wait paces the session. A flow
  that has sent only urgent frames on this link (the backward direction of a relay) holds at
  most ``debt_bytes`` of credit: beyond it its share goes to the pool, not into a hoard that
  starves the frames of the sessions sending this way. So a
  session's confirmations go first but, under contention, cost its own share: without the
  bound, a low-priority ETSI 004 stream whose every key is confirmed back over the same link
  took ~55 % of it from a priority-3 ETSI 014 session in the other direction (the fault
  matrix's 38 s outage after a controller kill, session 11).
* **A waiter expires at its deadline** (the request's QoS timeout): the shell answers it with
  the standard's timeout status. The token bucket (:mod:`~keyplane.keymanager.scheduling`)
  still caps every session before it gets here.

Invariants (tests/unit/keymanager/test_shares.py, property-based): ``pool + sum(credits)``
is the stock, never negative and never above what the link supplied; a ticket is granted at
most once; no waiter fits its flow's credit plus the pool (urgent: plus what its debt bound
still lends); no debt above ``debt_bytes`` but by a late loan, none above 1.25 times it; a flow
in debt holds no credit; no waiter outlives its deadline once :meth:`LinkShares.due` ran.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field

__all__ = ["Expired", "Grant", "LinkShares", "NodeShares", "weight"]


def weight(priority: int) -> int:
    """A flow's share weight: ``priority + 1`` for priorities 0-7 (clamped)."""
    return min(7, max(0, priority)) + 1


@dataclass(frozen=True)
class Grant:
    """``ticket`` may take ``nbytes`` of link key now (the shell takes them at once)."""

    ticket: object
    flow: str
    nbytes: int


@dataclass(frozen=True)
class Expired:
    """``ticket`` reached its deadline without key: answer it with a timeout."""

    ticket: object
    flow: str
    nbytes: int


@dataclass
class _Flow:
    weight: int
    credit: int = 0
    last: float = 0.0
    granted: int = 0  # bytes granted so far (figures)
    debt: int = 0  # bytes its urgent requests took from other flows, not yet repaid
    frames: bool = False  # it asked for more than urgent frames here (else capped low)


@dataclass
class _Waiter:
    ticket: object
    flow: str
    nbytes: int
    deadline: float
    priority: int
    urgent: bool
    seq: int = field(default=0)


class LinkShares:
    """Weighted shares of one link's send half (see the module docstring).

    Args:
        cap_bytes: most credit one flow may hold; beyond it its share goes to the pool.
        idle_s: a flow with no request for this long is forgotten (its credit to the pool).
        debt_bytes: most key one flow's urgent requests may owe the other flows.
    """

    def __init__(self, cap_bytes: int, idle_s: float, debt_bytes: int = 4096) -> None:
        if cap_bytes < 0 or idle_s <= 0 or debt_bytes < 0:
            raise ValueError("cap_bytes and debt_bytes must be >= 0 and idle_s > 0")
        self.cap_bytes = cap_bytes
        self.idle_s = idle_s
        self.debt_bytes = debt_bytes
        self.pool = 0
        self.stock = 0  # pool + credits: what the scheduler may hand out
        self.flows: dict[str, _Flow] = {}
        self._waiters: list[_Waiter] = []
        self._seq = itertools.count()

    # ---- figures -----------------------------------------------------------------------
    @property
    def waiting(self) -> int:
        """Requests waiting for key."""
        return len(self._waiters)

    def waiting_of(self, flow: str) -> int:
        """Requests of ``flow`` waiting for key."""
        return sum(1 for w in self._waiters if w.flow == flow)

    def credit(self, flow: str) -> int:
        """Bytes credited to ``flow`` (0 if unknown)."""
        f = self.flows.get(flow)
        return f.credit if f is not None else 0

    def debt(self, flow: str) -> int:
        """Bytes ``flow``'s urgent requests owe the other flows (0 if unknown)."""
        f = self.flows.get(flow)
        return f.debt if f is not None else 0

    def usable(self, flow: str, urgent: bool = False) -> int:
        """Most key one request of ``flow`` may take now: its credit and the pool, and if
        ``urgent`` what other flows may lend it within its debt bound."""
        own = self.credit(flow) + self.pool
        if not urgent:
            return own
        lenders = sum(g.credit for name, g in self.flows.items() if name != flow and not g.debt)
        return own + min(lenders, max(0, self.debt_bytes - self.debt(flow)))

    def next_deadline(self) -> float | None:
        """The earliest waiter's deadline, or None."""
        return min((w.deadline for w in self._waiters), default=None)

    # ---- events ------------------------------------------------------------------------
    def supply(self, level: int, now: float) -> list[Grant]:
        """The link's sendable key is ``level`` bytes now: share what is new, serve waiters.

        A level below the stock (key the scheduler did not hand out left the store, e.g. the
        peer no longer holds a block) is taken from the pool first, then from the credits.
        """
        self._forget_idle(now)
        delta = level - self.stock
        if delta > 0:
            self._share(delta)
        elif delta < 0:
            self._shrink(-delta)
        return self._serve(now)

    def request(self, ticket: object, flow: str, priority: int, nbytes: int, deadline: float,
                now: float, *, urgent: bool = False) -> list[Grant | Expired]:
        """``ticket`` of ``flow`` asks for ``nbytes`` by ``deadline``.

        Returns its :class:`Grant` at once if its credit and the pool (and, ``urgent``, the
        other flows' credit) cover it, :class:`Expired` if ``deadline`` has passed, else
        nothing (it waits for :meth:`supply` or :meth:`due`); before it, grants of earlier
        waiters that an idle flow's returned credit now covers.

        Raises:
            ValueError: ``nbytes`` < 1.
        """
        if nbytes < 1:
            raise ValueError("a request needs at least one byte")
        # an idle flow's credit went to the pool: it may cover earlier waiters first
        out: list[Grant | Expired] = list(self._serve(now)) if self._forget_idle(now) else []
        f = self.flows.get(flow)
        if f is None:
            f = self.flows[flow] = _Flow(weight(priority), last=now)
        f.weight = weight(priority)
        f.last = now
        f.frames = f.frames or not urgent
        w = _Waiter(ticket, flow, nbytes, deadline, priority, urgent, next(self._seq))
        if self._fits(w):
            return [*out, self._grant(w)]
        if deadline <= now:
            return [*out, self._grant(w) if self._fits_late(w) else Expired(ticket, flow, nbytes)]
        self._waiters.append(w)
        return out

    def cancel(self, ticket: object) -> bool:
        """Drop a waiting ``ticket`` (its request was cancelled); whether it waited."""
        for i, w in enumerate(self._waiters):
            if w.ticket is ticket:
                del self._waiters[i]
                return True
        return False

    def due(self, now: float) -> list[Grant | Expired]:
        """Time passed: serve what fits, expire waiters whose deadline is ``now`` or past."""
        out: list[Grant | Expired] = list(self._serve(now))
        keep: list[_Waiter] = []
        for w in self._waiters:
            if w.deadline > now:
                keep.append(w)
            elif w.flow in self.flows and self._fits_late(w):
                out.append(self._grant(w))
            else:
                out.append(Expired(w.ticket, w.flow, w.nbytes))
        self._waiters = keep
        return out

    def withdraw(self, flow: str) -> list[object]:
        """Take ``flow``'s waiting tickets out (its session was rerouted off this link: they
        try again on the new path); the tickets, oldest first.

        The flow's credit goes to the pool (the caller offers the key again with
        :meth:`supply`) and it counts as urgent-only again: what it may still send here is
        the confirmations of frames of the old path, and a flow that sent frames before the
        reroute must not keep holding up to ``cap_bytes``. Its debt stays, to be repaid."""
        out = [w.ticket for w in self._waiters if w.flow == flow]
        self._waiters = [w for w in self._waiters if w.flow != flow]
        f = self.flows.get(flow)
        if f is not None:
            self.pool += f.credit
            f.credit = 0
            f.frames = False
        return out

    def forget(self, flow: str) -> None:
        """``flow``'s session ended here: its credit goes back to the pool (the caller then
        offers the key again with :meth:`supply`, which serves waiters it now covers)."""
        f = self.flows.pop(flow, None)
        if f is not None:
            self.pool += f.credit

    # ---- internals ---------------------------------------------------------------------
    def _forget_idle(self, now: float) -> bool:
        """Forget flows idle for ``idle_s``, but not one in debt: it repays from its shares
        first (forgotten, its loan was never repaid, and the session could borrow the bound
        again after every idle period); whether any credit went to the pool."""
        busy = {w.flow for w in self._waiters}
        idle = [n for n, f in self.flows.items()
                if n not in busy and not f.debt and now - f.last >= self.idle_s]
        freed = False
        for name in idle:
            freed = freed or self.flows[name].credit > 0
            self.forget(name)
        return freed

    def _share(self, delta: int) -> None:
        self.stock += delta
        total = sum(f.weight for f in self.flows.values())
        if total == 0:
            self.pool += delta
            return
        parts = {name: delta * f.weight // total for name, f in self.flows.items()}
        # a flow in debt repays from its part first; the repayment goes to the others
        repaid = 0
        lenders = {name: f for name, f in self.flows.items() if not f.debt}
        for name, f in self.flows.items():
            if f.debt:
                r = min(parts[name], f.debt)
                f.debt -= r
                parts[name] -= r
                repaid += r
        lent_to = sum(f.weight for f in lenders.values())
        if repaid and lent_to:
            for name, f in lenders.items():
                parts[name] += repaid * f.weight // lent_to
        given = 0
        for name, f in self.flows.items():
            cap = self.cap_bytes if f.frames else min(self.cap_bytes, self.debt_bytes)
            part = min(parts[name], max(0, cap - f.credit))
            f.credit += part
            given += part
        self.pool += delta - given  # rounding, capped shares, repayments nobody may take

    def _shrink(self, missing: int) -> None:
        self.stock -= missing
        take = min(self.pool, missing)
        self.pool -= take
        missing -= take
        for f in sorted(self.flows.values(), key=lambda f: -f.credit):
            if missing <= 0:
                break
            take = min(f.credit, missing)
            f.credit -= take
            missing -= take

    def _fits(self, w: _Waiter) -> bool:
        return self.usable(w.flow, w.urgent) >= w.nbytes

    def _fits_late(self, w: _Waiter) -> bool:
        """An urgent waiter at its deadline: a loan up to a quarter more than the bound."""
        if not w.urgent:
            return False
        own = self.credit(w.flow) + self.pool
        borrow = max(0, w.nbytes - own)
        late_bound = self.debt_bytes + self.debt_bytes // 4
        return self.stock >= w.nbytes and self.debt(w.flow) + borrow <= late_bound

    def _grant(self, w: _Waiter) -> Grant:
        f = self.flows[w.flow]
        left = w.nbytes
        take = min(f.credit, left)
        f.credit -= take
        left -= take
        take = min(self.pool, left)
        self.pool -= take
        left -= take
        if left:  # urgent only: a loan from the flows not in debt holding the most credit
            f.debt += left
            for g in sorted((g for g in self.flows.values() if not g.debt),
                            key=lambda g: -g.credit):
                take = min(g.credit, left)
                g.credit -= take
                left -= take
                if not left:
                    break
        self.stock -= w.nbytes
        f.granted += w.nbytes
        return Grant(w.ticket, w.flow, w.nbytes)

    def _serve(self, now: float) -> list[Grant]:
        if not self._waiters or self.stock <= 0:
            return []
        out: list[Grant] = []
        keep: list[_Waiter] = []
        for w in sorted(self._waiters, key=lambda w: (not w.urgent, -w.priority, w.seq)):
            if w.flow not in self.flows:  # forgotten meanwhile: it asks again as new
                self.flows[w.flow] = _Flow(weight(w.priority), last=now, frames=not w.urgent)
            if self._fits(w):
                out.append(self._grant(w))
            else:
                keep.append(w)
        keep.sort(key=lambda w: w.seq)
        self._waiters = keep
        return out


class NodeShares(dict[str, LinkShares]):
    """A KM's :class:`LinkShares`, one per neighbour (the send half of that link).

    Args:
        peers: the neighbours; cap_bytes, idle_s, debt_bytes: as :class:`LinkShares` takes
            them.
    """

    def __init__(self, peers: Iterable[str], cap_bytes: int, idle_s: float,
                 debt_bytes: int = 4096) -> None:
        super().__init__({peer: LinkShares(cap_bytes, idle_s, debt_bytes) for peer in peers})

    def forget(self, flow: str) -> None:
        """``flow``'s session ended at this KM: its credit goes back to every pool."""
        for shares in self.values():
            shares.forget(flow)
