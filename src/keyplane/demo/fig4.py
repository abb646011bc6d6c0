"""The layout of the paper's Fig. 4, as data: where each marker goes, in plot pixels.

Lopez et al. (IEEE Network 2025), Fig. 4, draws one horizontal line per key manager and a
marker per step of each session at that KM: the request (blue), key material ready (orange),
the relay (brown), and so on. keyplane's timeline keeps those meanings and colours and adds two
things the paper's single-session figure did not need:

* **Sessions are told apart.** Within a KM's lane each session has its own sub-row, and the
  marker's ring carries the session's colour (the face keeps the event type's colour).
* **No marker hides another.** Markers of one sub-row that would overlap on screen are
  stacked vertically (the nearest free position, alternating up and down); time is never
  shifted. :func:`layout` works in pixels of the plot area, so the check that no two markers
  overlap (a test) is exact for the rendered figure.

Everything is measured from one time origin, the first event of the run, in the PNG, the
HTML page's plot and its table alike.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

from keyplane.events import Event, EventType

__all__ = ["FIG4_MARKERS", "SESSION_RINGS", "Layout", "Marker", "layout", "overlapping"]

FIG4_MARKERS: dict[EventType, tuple[str, str, str]] = {
    EventType.request_arrived: ("request", "o", "#1f77b4"),
    EventType.authenticated: ("user authenticated", "s", "#2ca02c"),
    EventType.configured: ("configuration", "D", "#9467bd"),
    EventType.session_operative: ("operative", "^", "#17becf"),
    EventType.key_material_ready: ("key material ready", "*", "#ff7f0e"),
    EventType.key_relayed: ("key relayed", ">", "#8c564b"),
    EventType.key_delivered: ("response (key delivered)", "P", "#d62728"),
    EventType.session_closed: ("session closed", "X", "#7f7f7f"),
    EventType.alarm: ("alarm", "v", "#e377c2"),
    EventType.session_rerouted: ("rerouted", "h", "#bcbd22"),
}
"""Event type -> (legend label, matplotlib marker, face colour). Request blue, key ready
orange, relay brown, as in the paper's Fig. 4."""

SESSION_RINGS = ("#000000", "#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4",
                 "#42d4f4", "#f032e6", "#9a6324", "#469990")
"""Ring colours of the sessions, in order of first appearance (cycled)."""


@dataclass(frozen=True)
class Marker:
    """One drawn marker: its event, where it goes (plot pixels) and its ring colour."""

    event: Event
    x_px: float
    y_px: float
    ring: str


@dataclass(frozen=True)
class Layout:
    """The whole figure's geometry in plot pixels (y grows downwards, lane 0 on top)."""

    markers: tuple[Marker, ...]
    lanes: tuple[str, ...]
    lane_top_px: tuple[float, ...]
    lane_height_px: tuple[float, ...]
    sessions: tuple[tuple[str, str], ...]
    """(session id, ring colour) in order of first appearance."""
    t0: float
    px_per_s: float
    width_px: float
    height_px: float
    marker_px: float


def _lanes(events: Sequence[Event]) -> list[str]:
    return sorted({e.node for e in events if e.node}, key=lambda n: (len(n), n))


def layout(events: Sequence[Event], *, width_px: float = 900.0, marker_px: float = 9.0,
           row_gap_px: float = 4.0) -> Layout:
    """Place every Fig. 4 marker of ``events`` (others are ignored; the time origin is the
    first of all ``events``).

    Args:
        width_px: width of the plot area.
        marker_px: marker diameter; two markers closer than this in both x and y overlap.
        row_gap_px: space between sub-rows.
    """
    t0 = min((e.t for e in events), default=0.0)
    # a step of a session at a KM; without a session only link-level events (alarms) are
    # drawn (the control plane's own copies of session steps carry no KM lane of their own)
    shown = sorted((e for e in events if e.type in FIG4_MARKERS and e.node
                    and (e.session or e.type is EventType.alarm)),
                   key=lambda e: (e.t, e.event_id))
    span = max((e.t for e in shown), default=t0) - t0
    px_per_s = (width_px - 2 * marker_px) / span if span > 0 else 1.0
    sessions: list[str] = []
    for e in shown:
        sid = e.session or ""
        if sid not in sessions:
            sessions.append(sid)
    ring = {sid: SESSION_RINGS[i % len(SESSION_RINGS)] for i, sid in enumerate(sessions)}
    markers: list[Marker] = []
    tops: list[float] = []
    heights: list[float] = []
    top = 0.0
    lanes = _lanes(shown)
    for node in lanes:
        mine = [e for e in shown if e.node == node]
        lane_sessions = [s for s in sessions if any((e.session or "") == s for e in mine)]
        placed_lane: list[Marker] = []
        row_top = top + row_gap_px
        for sid in lane_sessions:
            # (event, x, stack offset in marker steps) for this sub-row
            row: list[tuple[Event, float, int]] = []
            for e in (x for x in mine if (x.session or "") == sid):
                x = marker_px + (e.t - t0) * px_per_s
                row.append((e, x, _free_offset(x, [(px, k) for _, px, k in row], marker_px)))
            lo = min(k for _, _, k in row)
            hi = max(k for _, _, k in row)
            centre = row_top + (0.5 - lo) * marker_px
            placed_lane += [Marker(e, x, centre + k * marker_px, ring[sid]) for e, x, k in row]
            row_top += (hi - lo + 1) * marker_px + row_gap_px
        markers.extend(placed_lane)
        tops.append(top)
        heights.append(max(row_top - top, marker_px + 2 * row_gap_px))
        top += heights[-1]
    return Layout(tuple(markers), tuple(lanes), tuple(tops), tuple(heights),
                  tuple((s, ring[s]) for s in sessions), t0, px_per_s, width_px, top,
                  marker_px)


def _free_offset(x: float, placed: list[tuple[float, int]], d: float) -> int:
    """The nearest stack offset (0, 1, -1, 2, -2, ...) free at ``x``."""
    taken = {k for px, k in placed if abs(px - x) < d}
    for step in itertools.count():
        for k in ((step, -step) if step else (0,)):
            if k not in taken:
                return k
    raise AssertionError("unreachable")


def overlapping(lay: Layout) -> list[tuple[Marker, Marker]]:
    """Pairs of markers closer than one marker diameter in both x and y (should be none)."""
    d = lay.marker_px
    ms = sorted(lay.markers, key=lambda m: m.x_px)
    out = []
    for i, a in enumerate(ms):
        for b in ms[i + 1:]:
            if b.x_px - a.x_px >= d:
                break
            if abs(a.y_px - b.y_px) < d - 1e-9:
                out.append((a, b))
    return out
