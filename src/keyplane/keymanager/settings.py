"""Tunables of one key manager: named timeouts, queue limits, key-store thresholds.

Every wait on a peer has its own named bound here (STYLE.md §3). Protocol timers run on
the injected :class:`~keyplane.clock.Clock`; ``*_request_timeout_s`` are transport bounds on
a bus request (real seconds, as :meth:`keyplane.bus.Bus.request` takes them).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field

__all__ = ["KM_ENV_PREFIX", "KmSettings", "km_settings_from_env"]

KM_ENV_PREFIX = "KEYPLANE_KM_"

PositiveS = Annotated[float, Field(gt=0.0)]


class KmSettings(BaseModel):
    """Settings of a :class:`~keyplane.keymanager.KeyManager` (all fields have defaults)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # ---- waits on peers ---------------------------------------------------------------
    auth_request_timeout_s: PositiveS = 10.0
    """Bus request bound for AuthRequest -> AuthResponse (Access Control; a loaded 2-core
    machine, or a bus coming back from an outage, takes seconds)."""
    admission_request_timeout_s: PositiveS = 10.0
    """Bus request bound for SessionOpenRequest -> OpenAck (Admission Control)."""
    config_wait_s: PositiveS = 300.0
    """After OPEN_CONNECT returned "peer not connected", how long (clock) a session may wait
    for its SessionConfig before the KM gives it up and reports ``SessionClose(error)``."""
    relay_confirm_timeout_s: PositiveS = 2.0
    """Clock bound on one relay attempt: the source's wait for the destination's confirmation."""
    relay_attempts: Annotated[int, Field(ge=1, le=100)] = 3
    """Relay attempts per key batch (each with fresh link key, on the current path)."""
    peer_block_wait_s: Annotated[float, Field(ge=0.0)] = 2.0
    """Clock bound on a sender's wait for its peer to confirm it holds a block (the two ends
    of a link store a block moments apart) when only such blocks would cover a frame."""
    idle_probe: bool = True
    """A stream whose idle timer ran out asks the other endpoint KM before closing
    (docs/keymanager.md "Idle: both ends"); False: it closes at once (one-sided idle)."""
    idle_probe_timeout_s: PositiveS = 30.0
    """Bus request bound on an idle probe's answer from the other endpoint (each hop of a
    relayed path forwards it within what is left); capped at a quarter of the session's
    idle timeout. No answer in time: the path is taken to be in a fault (held)."""
    idle_hold_max_s: PositiveS = 1800.0
    """Longest a KM holds an idle stream whose other end does not answer its probes (a
    KM or the path down); then it closes for ``idle_timeout`` as without a probe."""
    pqc_offer_timeout_s: PositiveS = 2.0
    """Bus request bound for an ML-KEM offer from the next KM (PQC and combined hops)."""
    pqc_offer_ttl_s: PositiveS = 10.0
    """Clock time a KM keeps an ML-KEM offer (its decapsulation key) open for the frame it
    was made for; afterwards the frame is refused and the key is gone."""
    pqc_max_pending_offers: Annotated[int, Field(ge=1)] = 4096
    """Open ML-KEM offers a KM holds at once; beyond it offer requests are refused."""

    # ---- queues and scheduling -------------------------------------------------------
    max_concurrent_exchanges: Annotated[int, Field(ge=1)] = 64
    """Key exchanges a KM runs at once; further requests wait in the priority queues."""
    queue_limit: Annotated[int, Field(ge=0)] = 10_000
    """Requests that may wait in the priority queues; beyond it a request gets KmBusy."""
    aging_interval_s: PositiveS = 1.0
    """Anti-starvation: a waiting request gains one priority level per interval waited."""
    share_cap_bytes: Annotated[int, Field(ge=0)] = 65_536
    """Scarce link key (docs/keymanager.md): most key one session may hold as its share of a
    link's new key; beyond it the share goes to a common pool anyone may use."""
    share_idle_s: PositiveS = 10.0
    """A session with no request on a link for this long gives its share back to the pool."""
    share_debt_bytes: Annotated[int, Field(ge=0)] = 4096
    """Most link key one session's confirmation and demand frames (urgent) may borrow from
    other sessions' shares; repaid from its own later share (docs/keymanager.md)."""
    forward_key_wait_s: PositiveS = 1.0
    """Clock bound on an intermediate KM's wait for link key to forward a frame (the source
    waits up to the request's QoS timeout; a hop cannot know it). At most half of
    ``relay_confirm_timeout_s`` is used, so the hop's refusal reaches the source in time."""
    keepalive_min_interval_s: Annotated[float, Field(ge=0.0)] = 0.25
    """Coalesce KeepAlive signals per session: at most one per interval (capped at half
    the session's idle timeout), plus one trailing KeepAlive at the end of an interval in
    which requests were not signalled, so Admission Control's session timer is never
    reset later than by the last request. 0: one KeepAlive per key request."""

    # ---- link key stores ---------------------------------------------------------------
    keystore_low_water_bits: Annotated[int, Field(ge=0)] = 65_536
    """Below this many sendable bits on a link the store emits ``keystore_low``."""
    keystore_capacity_bits: Annotated[int, Field(ge=1)] = 1 << 30
    """At or above this many stored bits the store emits ``keystore_full`` (advisory: the
    block is still kept, so both ends of a link stay identical; the physical layer pauses)."""
    link_reserve_bytes: Annotated[int, Field(ge=0)] = 4096
    """Bytes of a link's send half reserved (durably removed from the store) per database
    write, at most: never more than half of the sendable key beyond the frame being sent,
    so a crash (which forfeits the unused rest: it is never reused) leaves a scarce store
    at least half its key. 0 = one write per use."""
    link_block_rewrite_s: Annotated[float, Field(ge=0.0)] = 1.0
    """A partly used link key block's stored (sealed) bytes are rewritten with the spent
    ranges zeroed this many seconds after the first use they do not reflect; each use in
    between writes the block's offsets only (what keeps a byte from being used twice), and
    a block used up in between is deleted instead. 0 = rewrite them at every use."""
    peer_ahead_limit: Annotated[int, Field(ge=0)] = 4096
    """Block ids a link store remembers its peer holding before it stores them itself."""

    # ---- ETSI 014 limits -------------------------------------------------------------
    default_key_size_bits: Annotated[int, Field(ge=8)] = 256
    min_key_size_bits: Annotated[int, Field(ge=8)] = 64
    max_key_size_bits: Annotated[int, Field(ge=8)] = 8192
    max_keys_per_request: Annotated[int, Field(ge=1)] = 1024
    max_keys_per_pair: Annotated[int, Field(ge=1)] = 100_000
    """Keys a destination KM holds for one (master, slave) pair before refusing more."""
    etsi014_qos_timeout_ms: Annotated[int, Field(ge=1)] = 10_000
    """QoS timeout used for implicit ETSI 014 sessions (ETSI 014 has no QoS of its own)."""
    etsi014_ack_hold_s: PositiveS = 3600.0
    """How long a key handed out by dec_keys with ``keyplane_ack`` stays held for its slave
    SAE without a confirmation; then it is spent (docs/api/etsi014.md)."""
    etsi014_stock_keys: Annotated[int, Field(ge=0, le=1024)] = 32
    """Most keys the master's KM relays ahead for one busy ETSI 014 pair (its stock, #15;
    docs/api/etsi014.md "Key stock"): an enc_keys of at most this many keys the stock covers
    hands out keys already held at both ends instead of relaying its own. 0 = off."""
    etsi014_stock_window_s: PositiveS = 1.0
    """The stock's demand window: a pair's stock is at most the keys it asked for (in
    requests of at most ``etsi014_stock_keys``) in one window; after a failed refill the
    next waits this long."""
    etsi014_stock_min_requests: Annotated[int, Field(ge=1)] = 16
    """Requests a pair must make within one stock window before it gets a stock (rare or
    idle pairs spend no link key ahead of demand)."""


def km_settings_from_env(environ: Mapping[str, str] | None = None, **explicit: Any
                         ) -> KmSettings:
    """:class:`KmSettings` from ``KEYPLANE_KM_<FIELD>`` variables (e.g.
    ``KEYPLANE_KM_ETSI014_STOCK_KEYS=32``): how an operator tunes the KMs of a ``keyplane
    node``, ``run`` or ``nodes`` process without code (see
    :func:`keyplane.bus.settings.settings_from_env`; explicit arguments win).

    Raises:
        ConfigError: an unknown variable or a bad value (named in the message).
    """
    from keyplane.bus.settings import settings_from_env

    result: KmSettings = settings_from_env(KmSettings, KM_ENV_PREFIX, environ, **explicit)
    return result
