"""The ETSI 014 key stock of a pair session (pure core, #15): when to relay keys ahead.

A one-key ``enc_keys`` that relays its own key pays a whole relay (KeyFrame, MAC, link key,
bus round trip, confirmation, journal rows of every state) for 32 bytes. The source KM of
a pair session that asks often therefore keeps a small stock of keys relayed ahead of
demand, in one batch: a request it covers hands out keys already ``ready`` at both ends
(one local commit). The shell (:mod:`~keyplane.keymanager.production`) runs the refill;
this module only decides, from events and ``now``, and does no I/O.

The rule (settings ``etsi014_stock_*`` of :class:`~keyplane.keymanager.KmSettings`):

* **Demand.** Every enc_keys of at most ``cap`` keys counts its keys in a window of
  ``window_s``; the demand is the larger of the current and the previous window (a window
  older than that counts nothing).
* **Adaptive target.** No stock unless the pair made at least ``min_requests`` requests in
  that window (an idle or rare pair costs no link key: with 10,000 live sessions only the
  busy ones hold a stock); then ``min(cap, keys demanded in a window)``, so a stock never
  holds more than about one window of the pair's own demand.
* **Refill** when the stock is at or below half the target, up to the target, as ONE batch;
  never more than one refill in flight per pair; after a failed refill none for one window.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["StockDemand", "note_request", "refill_count", "refill_done"]


@dataclass
class StockDemand:
    """A pair session's recent demand and its refill state (memory only)."""

    start: float = float("-inf")  # the current window's start
    requests: int = 0  # requests and keys counted in the current window
    keys: int = 0
    prev_requests: int = 0  # ... in the window before it
    prev_keys: int = 0
    inflight: bool = False  # a refill runs
    retry_at: float = float("-inf")  # no refill before (a refill failed)


def _roll(d: StockDemand, now: float, window_s: float) -> None:
    if now - d.start < window_s:
        return
    if now - d.start < 2 * window_s:
        d.prev_requests, d.prev_keys = d.requests, d.keys
    else:  # a whole window passed without a request
        d.prev_requests = d.prev_keys = 0
    d.start, d.requests, d.keys = now, 0, 0


def note_request(d: StockDemand, keys: int, cap: int, now: float, window_s: float) -> None:
    """An enc_keys of ``keys`` keys arrived (requests above ``cap`` keys are bulk: they
    relay their own batch and do not count)."""
    _roll(d, now, window_s)
    if 0 < keys <= cap:
        d.requests += 1
        d.keys += keys


def target(d: StockDemand, cap: int, min_requests: int, now: float, window_s: float) -> int:
    """The stock the pair should hold now (0: none)."""
    _roll(d, now, window_s)
    if cap <= 0 or max(d.requests, d.prev_requests) < min_requests:
        return 0
    return min(cap, max(d.keys, d.prev_keys))


def refill_count(d: StockDemand, stock: int, cap: int, min_requests: int, now: float,
                 window_s: float) -> int:
    """How many keys to relay ahead now, as one batch (0: no refill).

    The caller starts the refill at once when this is above 0 (it marks it in flight) and
    reports its end with :func:`refill_done`.
    """
    if d.inflight or now < d.retry_at:
        return 0
    want = target(d, cap, min_requests, now, window_s)
    if want == 0 or stock > want // 2:
        return 0
    d.inflight = True
    return want - stock


def refill_done(d: StockDemand, ok: bool, now: float, window_s: float) -> None:
    """A refill ended; a failed one (no link key, relay failed) waits a window."""
    d.inflight = False
    if not ok:
        d.retry_at = now + window_s
