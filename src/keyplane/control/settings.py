"""Settings of the control-plane elements (one pydantic model per element, validated once).

Every field carries its unit in its name. Protocol timers (peer wait, acknowledgement
bounds, session timer, monitoring period) run on the injected :class:`~keyplane.clock.Clock`;
``bus_timeout_s`` is a transport bound in real seconds (see :mod:`keyplane.clock`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "AccessSettings",
    "AdmissionSettings",
    "AlarmKind",
    "ControlSettings",
    "MonitoringSettings",
    "RoutingSettings",
    "SdnSettings",
]

Positive = Annotated[float, Field(gt=0.0)]
NonNegative = Annotated[float, Field(ge=0.0)]

AlarmKind = Literal["eavesdropper_suspected", "qber_high", "key_rate_collapse", "link_down"]
"""The Monitoring Element's alarm kinds (``cleared`` is the absence of them all)."""


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AccessSettings(_Settings):
    """Access Control (no tunables beyond the user database today)."""

    require_peer_known: bool = True
    """Refuse a request whose ``peer_sae_id`` is not in the applications table."""


class AdmissionSettings(_Settings):
    """Admission Control (paper Fig. 2b)."""

    peer_wait_timeout_s: Positive = 30.0
    """ETSI 004: how long the first opener waits for its peer before it is refused."""
    config_ack_timeout_s: Positive = 10.0
    """Bound (clock) on each KM's ConfigAck; a late KM rolls the whole path back (a KM
    process busy starting its links on a loaded 2-core machine takes seconds)."""
    delete_confirm_timeout_s: Positive = 10.0
    """Bound (clock) on each KM's DeleteConfirm; reserved capacity is freed after it."""
    route_timeout_s: Positive = 10.0
    """Bound (clock) on the Routing Element's answer to a route request."""
    bus_timeout_s: Positive = 10.0
    """Transport bound (real seconds) of each bus request; the clock bounds above apply first."""
    session_timer_grace_s: NonNegative = 1.0
    """Added to the SLA idle timeout so the KM's own idle close normally arrives first."""
    bucket_burst_s: Positive = 1.0
    """Token bucket size = rate × this (at least one key chunk)."""
    max_key_chunk_size: Annotated[int, Field(ge=1)] = 4096
    """Largest ETSI 004 Key_chunk_size (bytes) any user may ask for."""
    max_key_ttl_s: Annotated[int, Field(ge=0)] = 86_400
    """Largest ETSI 004 TTL (seconds) any user may ask for."""
    directory_cache_ttl_s: NonNegative = 5.0
    """How long (clock) a user's SLA and an application's node are cached (0: never)."""
    keepalive_store_interval_s: NonNegative = 5.0
    """At most one store write per session per this many (wall) seconds to stamp its last
    keep-alive; a restarted controller re-arms every timer from its start regardless."""


class RoutingSettings(_Settings):
    """Routing Element: the link weight function and capacity rule.

    Weight of a usable link (``weight="metrics"``) that the Monitoring Element has a
    record for (the SKR and QBER terms only when that figure was measured)::

        w = 1
            + skr_coef      * skr_ref_bps / max(skr_bps, 1)
            + qber_coef     * qber
            + sessions_coef * sessions
            + buffer_coef   * buffer_ref_bits / (buffer_bits + buffer_ref_bits)

    A link with no record weighs 1; with no monitoring data at all every link weighs 1:
    shortest hop count, as in the paper's experiment. ``weight="hops"`` ignores the
    metrics altogether.

    Capacity of a link: ``link_capacity_bps[link]`` if configured, else its measured SKR
    when ``use_skr_as_capacity``, else ``default_capacity_bps`` (``None``: unbounded).
    The sum of the ``min_bps`` reserved by live sessions on a link never exceeds it.

    Hybrid provisioning: a link *without QKD key* (out of service, reported ``down``, or
    monitored with no key rate and an empty buffer) can carry only sessions whose hybrid
    policy allows PQC alone; for them it weighs ``w + pqc_hop_penalty`` (QKD paths are
    preferred) and its QKD capacity does not bound them (ML-KEM hop keys do not consume it).
    """

    weight: Literal["metrics", "hops"] = "metrics"
    skr_ref_bps: Positive = 1_000.0
    skr_coef: NonNegative = 1.0
    qber_coef: NonNegative = 10.0
    sessions_coef: NonNegative = 0.1
    buffer_ref_bits: Positive = 100_000.0
    buffer_coef: NonNegative = 0.5
    use_skr_as_capacity: bool = True
    default_capacity_bps: NonNegative | None = None
    link_capacity_bps: dict[str, NonNegative] = Field(default_factory=dict)
    metrics_refresh_s: Positive | None = None
    """How often (clock) link metrics are re-read from the topology database. The
    Monitoring Element sends its figures to the Routing Element as it persists them
    (:class:`~keyplane.control.wire.LinkMetricsReport`), so by default the database is
    read only at start; set this when another writer updates ``link_metrics``."""
    reroute_on: frozenset[AlarmKind] = frozenset(
        {"eavesdropper_suspected", "qber_high", "key_rate_collapse", "link_down"})
    """Alarm kinds that take a link out of service and reroute its sessions."""
    admission_timeout_s: Positive = 5.0
    """Bound (real seconds) on Admission Control's answer to a reroute order."""
    snapshot_timeout_s: Positive = 1.0
    """Bound (real seconds) on the SDN Controller's topology snapshot at start."""
    pqc_hop_penalty: NonNegative = 10.0
    """Extra weight of a link without QKD key on the path of a PQC-fallback session."""


class MonitoringSettings(_Settings):
    """Monitoring Element: alarm rules, the eavesdropper test, link tests, persistence.

    Every alarm is latched (docs/control.md, "Alarms"): it is raised as soon as its
    condition holds, and cleared only once its clear condition (stricter: hysteresis) has
    held for ``clear_hold_s`` and the alarm has been up ``min_hold_s``, so a constant fault
    never flaps and a route is never computed over a link between two of its alarms.
    """

    check_interval_s: Positive = 5.0
    """Period (clock) of the passive check: freshness and latched clears of every link."""
    stale_after_s: Positive = 15.0
    """A link with no telemetry for this long is declared down (missing telemetry)."""
    qber_alarm_threshold: Annotated[float, Field(gt=0.0, lt=0.5)] | None = None
    """``None``: each link's own ``postprocessing.qber_threshold``."""
    qber_clear_margin: NonNegative = 0.01
    """Hysteresis: a QBER alarm clears below threshold − margin."""
    skr_collapse_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1
    """Key-rate collapse: SKR below this fraction of the link's baseline SKR."""
    skr_clear_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    """Hysteresis: a key-rate collapse clears at or above this fraction of the baseline."""
    skr_baseline_alpha: Annotated[float, Field(gt=0.0, le=1.0)] = 0.2
    """EWMA factor of the baseline SKR (updated only while the rate is healthy)."""
    min_hold_s: NonNegative = 30.0
    """A measured alarm (eavesdropper, QBER, key rate) stays raised at least this long (clock)."""
    clear_hold_s: NonNegative = 10.0
    """A measured alarm clears only after its clear condition has held this long without a
    break."""
    link_down_min_hold_s: NonNegative = 5.0
    """``link_down`` stays raised at least this long. Shorter than ``min_hold_s``: the
    modules' own state (or their silence) is a fact, not a noisy estimate, and a node
    process that restarts should not keep its links out of service for long."""
    link_down_clear_hold_s: NonNegative = 2.0
    """``link_down`` clears only after the link has been up this long without a break."""

    eve_z_raise: Annotated[float, Field(gt=0.0)] = 5.0
    """Eavesdropper test: standard errors of QBER rise over the link's baseline that raise
    ``eavesdropper_suspected`` (one block, or the last ``eve_window_blocks`` pooled)."""
    eve_z_clear: NonNegative = 2.0
    """The suspicion clears once the recent QBER is within this many standard errors."""
    eve_min_rise: Annotated[float, Field(ge=0.0, lt=0.5)] = 0.01
    """…and only a rise of at least this much QBER counts (a huge sample makes a harmless
    0.1 % drift significant; intercept-resend on a fraction f adds about f/4)."""
    eve_window_blocks: Annotated[int, Field(ge=1, le=100)] = 3
    """Recent blocks pooled for the test (more power against a small, steady rise)."""
    baseline_min_blocks: Annotated[int, Field(ge=1)] = 3
    """Healthy blocks a link's QBER baseline needs before the test is armed."""
    baseline_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.98
    """Per healthy block, the weight the baseline keeps (1: never forgets)."""

    persist_interval_s: Positive = 1.0
    """The latest figures of each changed link are written to the store and sent to the
    Routing Element at most once per this period (clock), never per sample."""

    probe_interval_s: Positive | None = 10.0
    """Active link tests: every this many seconds (clock) each link's QKD modules are
    asked for their status (``None``: no tests)."""
    probe_timeout_s: Positive = 2.0
    """Bound (clock) on a link test's answer."""
    probe_failures_down: Annotated[int, Field(ge=1)] = 2
    """Consecutive unanswered link tests that declare a link down."""
    probe_links_per_round: Annotated[int, Field(ge=1)] = 64
    """At most this many links are tested per round (round-robin), so tests cost a bounded
    rate at any network size."""


class SdnSettings(_Settings):
    """SDN Controller."""

    load_topology_on_start: bool = True
    """Write the topology file's nodes, links, users and applications into the database."""
    admission_timeout_s: Positive = 5.0
    """Bound (real seconds) on Admission Control's list of live sessions at start."""


class ControlSettings(_Settings):
    """All control-plane settings."""

    access: AccessSettings = AccessSettings()
    admission: AdmissionSettings = AdmissionSettings()
    routing: RoutingSettings = RoutingSettings()
    monitoring: MonitoringSettings = MonitoringSettings()
    sdn: SdnSettings = SdnSettings()
