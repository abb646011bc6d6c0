"""The Monitoring Element's pure core: link health, latched alarms, the eavesdropper test.

No I/O; callers pass the clock's ``now``. Inputs: link telemetry (per block, from the
QKD modules), KM telemetry (buffers, sessions), link-test answers (:meth:`MonitoringCore.
on_probe`) and the clock (:meth:`MonitoringCore.check`). Outputs: the
:class:`~keyplane.messages.LinkAlarm` transitions to publish, and the links whose figures
changed since the last :meth:`MonitoringCore.take_changed` (persisted at a bounded rate).

Alarm kinds, each behind an :class:`~.alarms.AlarmLatch` (raise condition / clear
condition):

* ``link_down`` — the modules report ``down`` (once the link has been up: a starting link
  reports down until its two ends meet), or a link that has reported before is silent for
  ``stale_after_s``, or a link that has answered link tests before stops answering
  ``probe_failures_down`` of them / the link reports again, answers, is up. Its holds are
  ``link_down_min_hold_s`` / ``link_down_clear_hold_s`` (the modules' state is a fact, not
  an estimate); the measured kinds below use ``min_hold_s`` / ``clear_hold_s``.
* ``eavesdropper_suspected`` — the QBER test of :mod:`.detection` / the recent window
  back within ``eve_z_clear`` standard errors.
* ``qber_high`` — QBER above the link's threshold / below threshold − ``qber_clear_margin``.
* ``key_rate_collapse`` — SKR below ``skr_collapse_fraction`` of the link's baseline (an
  EWMA of its healthy SKR) / at least ``skr_clear_fraction`` of it.

``cleared`` is published once no kind is raised on the link any more. Links that never
reported and never answered a test are never declared down: an idle emulation (or a
network without a physical layer, as in control-plane tests) must not take the network out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from keyplane.config import AUTO_Z_BASIS_GRID, Topology
from keyplane.control.monitoring.alarms import AlarmLatch
from keyplane.control.monitoring.detection import QberBaseline, Verdict
from keyplane.control.settings import AlarmKind, MonitoringSettings
from keyplane.messages import KmTelemetry, LinkAlarm, LinkState, LinkTelemetry
from keyplane.store.topology import LinkMetrics

__all__ = ["DEFAULT_QBER_THRESHOLD", "KINDS", "LinkHealth", "MonitoringCore"]

DEFAULT_QBER_THRESHOLD = 0.11
DEFAULT_TEST_RATIO = 1.0
"""Test-basis bits per key-basis sifted bit when a link reports no sample size: 1 with
equally likely bases (``postprocessing.z_basis_probability`` 0.5)."""

KINDS: tuple[AlarmKind, ...] = ("link_down", "eavesdropper_suspected", "qber_high",
                                "key_rate_collapse")
"""Alarm kinds, in the order their raises are published."""


@dataclass
class LinkHealth:
    """What the Monitoring Element knows about one link."""

    link_id: str
    qber_threshold: float
    test_ratio: float = DEFAULT_TEST_RATIO
    last_seen: float | None = None  # clock time of the last LinkTelemetry
    t: float = 0.0
    state: LinkState = LinkState.up
    skr_bps: float | None = None
    qber: float | None = None
    baseline_skr_bps: float | None = None
    buffer_bits: dict[str, int] = field(default_factory=dict)  # per reporting node
    sessions: dict[str, int] = field(default_factory=dict)
    latches: dict[str, AlarmLatch] = field(default_factory=dict)
    qber_baseline: QberBaseline = field(default_factory=QberBaseline)
    verdict: Verdict | None = None  # the eavesdropper test's last outcome
    probe_answered: bool = False  # has ever answered a link test
    probe_failures: int = 0  # consecutive unanswered link tests
    probe_state: str | None = None  # state the last answered test reported
    seen_up: bool = False  # the modules have reported the link up (or degraded) once

    @property
    def alarms(self) -> set[str]:
        """The alarm kinds raised on the link."""
        return {k for k, latch in self.latches.items() if latch.raised}

    def metrics(self) -> LinkMetrics:
        """The row for the topology database (and the Routing Element).

        A link that reports down but has never been up is ``starting`` (its two ends have
        not met yet, e.g. while node processes start), not ``down``: Routing keeps it on
        paths, where a session waits for its first key instead of being refused.
        """
        state = self.state.value
        if self.state is LinkState.down and not self.seen_up:
            state = "starting"
        return LinkMetrics(link_id=self.link_id, t=self.t, state=state,
                           skr_bps=self.skr_bps, qber=self.qber,
                           sessions=max(self.sessions.values(), default=0),
                           buffer_bits=min(self.buffer_bits.values(), default=0))


def _is_state_report(msg: LinkTelemetry) -> bool:
    """A state change report carries no block: its zero rate is not a measurement."""
    return (msg.block_id is None and msg.secret_bits == 0 and msg.sifted_bits == 0
            and msg.qber is None)


class MonitoringCore:
    """Telemetry aggregation and alarm logic (no I/O; callers pass the clock's time).

    Args:
        topology: the links to watch, their QBER thresholds and basis probabilities.
        settings: thresholds, hold times, the eavesdropper test's parameters.
    """

    def __init__(self, topology: Topology, settings: MonitoringSettings | None = None) -> None:
        self.settings = settings or MonitoringSettings()
        self.links: dict[str, LinkHealth] = {}
        self._changed: set[str] = set()
        self.clear_started = False
        """Set when a raised alarm's clear condition started to hold (its clear is now
        pending): the shell re-plans its wake-up and resets this."""
        for link in topology.links:
            chosen = link.postprocessing.z_basis_probability
            # "auto": the twin picks the bias and its reports give their sample size; for a
            # report without one, assume the fewest test bits auto can leave
            z = max(AUTO_Z_BASIS_GRID) if chosen == "auto" else chosen
            p = max(z, 1.0 - z)
            self.add_link(link.link_id, link.postprocessing.qber_threshold,
                          ((1.0 - p) / p) ** 2)

    def add_link(self, link_id: str, qber_threshold: float = DEFAULT_QBER_THRESHOLD,
                 test_ratio: float = DEFAULT_TEST_RATIO) -> None:
        """Watch a link (idempotent). ``test_ratio``: test-basis bits per key-basis sifted
        bit, the QBER sample size of a report that does not give it."""
        if link_id not in self.links:
            threshold = self.settings.qber_alarm_threshold or qber_threshold
            self.links[link_id] = LinkHealth(
                link_id, threshold, test_ratio,
                qber_baseline=QberBaseline(self.settings.eve_window_blocks))

    def remove_link(self, link_id: str) -> None:
        """Stop watching a link."""
        self.links.pop(link_id, None)
        self._changed.discard(link_id)

    def take_changed(self) -> list[LinkMetrics]:
        """The figures of every link that changed since the last call (then forgotten)."""
        out = [self.links[lid].metrics() for lid in sorted(self._changed) if lid in self.links]
        self._changed.clear()
        return out

    # ------------------------------------------------------------------ inputs

    def on_link_telemetry(self, msg: LinkTelemetry, now: float) -> list[LinkAlarm]:
        """Take a QKD module's figures; returns the alarms they raise or clear."""
        h = self.links.get(msg.link_id)
        if h is None:
            return []
        h.last_seen, h.t, h.state = now, msg.t or now, msg.state
        h.seen_up = h.seen_up or msg.state is not LinkState.down
        self._changed.add(h.link_id)
        if not _is_state_report(msg):
            h.skr_bps = msg.skr_bps
            self._update_skr_baseline(h)
        if msg.qber is not None:
            h.qber = msg.qber
            n = msg.qber_sample_bits
            if n is None:
                n = round(h.test_ratio * msg.sifted_bits)
            if n > 0:
                self._judge(h, msg.qber, n)
        return self._evaluate(h, now)

    def on_km_telemetry(self, msg: KmTelemetry) -> list[str]:
        """Take a KM's buffer levels and session counts; returns the links it touched."""
        touched = []
        for link_id in set(msg.buffer_bits) | set(msg.sessions):
            h = self.links.get(link_id)
            if h is None:
                continue
            if link_id in msg.buffer_bits:
                h.buffer_bits[msg.node] = msg.buffer_bits[link_id]
            if link_id in msg.sessions:
                h.sessions[msg.node] = msg.sessions[link_id]
            touched.append(link_id)
            self._changed.add(link_id)
        return sorted(touched)

    def on_probe(self, link_id: str, state: str | None, now: float, *,
                 unreachable: bool = False) -> list[LinkAlarm]:
        """Take a link test's outcome: the state the modules answered, or ``None``.

        Args:
            state: ``up`` / ``degraded`` / ``down`` as answered; ``None``: no answer.
            unreachable: nobody serves the link's tests (no answer, and no module that
                could answer): counts as a failure only for a link that answered before.
        """
        h = self.links.get(link_id)
        if h is None:
            return []
        if state is not None:
            h.probe_answered, h.probe_failures, h.probe_state = True, 0, state
            h.seen_up = h.seen_up or state != LinkState.down.value
        elif h.probe_answered or not unreachable:
            h.probe_failures += 1
        return self._evaluate(h, now)

    def check(self, now: float) -> list[LinkAlarm]:
        """The periodic check: freshness and pending clears of every link."""
        out: list[LinkAlarm] = []
        for h in self.links.values():
            out += self._evaluate(h, now)
        return out

    def next_clear_due(self) -> float | None:
        """The earliest time a pending clear could complete (``None``: none pending)."""
        dues = [d for h in self.links.values() for kind, latch in h.latches.items()
                if (d := latch.due(**self._holds(kind))) is not None]
        return min(dues, default=None)

    def _holds(self, kind: str) -> dict[str, float]:
        s = self.settings
        if kind == "link_down":
            return {"min_hold_s": s.link_down_min_hold_s,
                    "clear_hold_s": s.link_down_clear_hold_s}
        return {"min_hold_s": s.min_hold_s, "clear_hold_s": s.clear_hold_s}

    # ------------------------------------------------------------------ rules

    def _judge(self, h: LinkHealth, qber: float, n: int) -> None:
        s = self.settings
        v = h.qber_baseline.judge(qber, n, z_raise=s.eve_z_raise, z_clear=s.eve_z_clear,
                                  min_rise=s.eve_min_rise, min_blocks=s.baseline_min_blocks)
        h.verdict = v
        eve = h.latches.get("eavesdropper_suspected")
        if v.normal and not (eve is not None and eve.raised) and qber <= h.qber_threshold:
            h.qber_baseline.learn(qber, n, s.baseline_decay)

    def _update_skr_baseline(self, h: LinkHealth) -> None:
        s, skr, base = self.settings, h.skr_bps, h.baseline_skr_bps
        if skr is None or h.state is not LinkState.up or h.alarms:
            return
        if base is None or skr >= s.skr_clear_fraction * base:
            a = s.skr_baseline_alpha
            h.baseline_skr_bps = skr if base is None else (1 - a) * base + a * skr

    def _conditions(self, h: LinkHealth, now: float) -> dict[AlarmKind, tuple[bool, bool]]:
        """Per kind: (raise condition, clear condition) at ``now``."""
        s = self.settings
        silent = h.last_seen is not None and now - h.last_seen > s.stale_after_s
        probe_down = h.probe_answered and h.probe_failures >= s.probe_failures_down
        # a link starting up reports down until its two ends meet: not a fault until it
        # has been up once (as a link that never reported is not declared silent)
        reported_down = h.seen_up and (h.state is LinkState.down
                                       or h.probe_state == LinkState.down.value)
        down = reported_down or silent or probe_down
        out: dict[AlarmKind, tuple[bool, bool]] = {"link_down": (down, not down)}
        v = h.verdict
        out["eavesdropper_suspected"] = ((v.suspicious, v.normal) if v is not None
                                         else (False, True))
        if h.qber is not None:
            out["qber_high"] = (h.qber > h.qber_threshold,
                                h.qber <= h.qber_threshold - s.qber_clear_margin)
        base, skr = h.baseline_skr_bps, h.skr_bps
        if base is not None and base > 0 and skr is not None and not silent:
            out["key_rate_collapse"] = (skr < s.skr_collapse_fraction * base,
                                        skr >= s.skr_clear_fraction * base)
        else:
            # no fresh rate: a collapse stays until the link shows its rate again
            out["key_rate_collapse"] = (False, False)
        return out

    def _evaluate(self, h: LinkHealth, now: float) -> list[LinkAlarm]:
        conditions = self._conditions(h, now)
        was_alarmed = bool(h.alarms)
        raised: list[AlarmKind] = []
        for kind in KINDS:
            raise_now, clear_ok = conditions.get(kind, (False, True))
            latch = h.latches.get(kind)
            if latch is None:
                if not raise_now:
                    continue
                latch = h.latches[kind] = AlarmLatch()
            waiting = latch.clear_since is not None
            change = latch.update(raise_now, clear_ok, now, **self._holds(kind))
            if not waiting and latch.clear_since is not None:
                self.clear_started = True
            if change == "raised":
                raised.append(kind)
            elif change == "cleared":
                del h.latches[kind]
        out = [self._alarm(h, kind, now) for kind in raised]
        if was_alarmed and not h.alarms:
            out.append(self._alarm(h, "cleared", now))
        if out:
            self._changed.add(h.link_id)
        return out

    def _alarm(self, h: LinkHealth, kind: AlarmKind | Literal["cleared"],
               now: float) -> LinkAlarm:
        s = self.settings
        if kind == "eavesdropper_suspected":
            v = h.verdict
            assert v is not None and v.baseline_qber is not None
            text = (f"QBER {v.baseline_qber + v.rise:.4f} is {v.z:.1f} standard errors above "
                    f"the link's baseline {v.baseline_qber:.4f}: suspected eavesdropper")
        elif kind == "qber_high":
            text = (f"QBER {h.qber:.4f} above {h.qber_threshold:.4f}: possible eavesdropper"
                    if h.qber is not None else "QBER high")
        elif kind == "key_rate_collapse":
            text = (f"SKR {h.skr_bps:g} bps below {s.skr_collapse_fraction:g} of "
                    f"its baseline {h.baseline_skr_bps or 0:g} bps")
        elif kind == "link_down":
            if h.state is LinkState.down or h.probe_state == LinkState.down.value:
                text = "QKD modules report the link down"
            elif h.probe_answered and h.probe_failures >= s.probe_failures_down:
                text = f"QKD modules did not answer {h.probe_failures} link tests"
            else:
                text = f"no telemetry for {s.stale_after_s:g} s"
        else:
            text = "link healthy again"
        return LinkAlarm(link_id=h.link_id, kind=kind,
                         severity="MINOR" if kind == "cleared" else "MAJOR",
                         qber=h.qber, skr_bps=h.skr_bps, message=text, t=now,
                         active=sorted(h.alarms))
