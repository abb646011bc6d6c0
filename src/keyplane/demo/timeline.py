"""Render an event stream as the paper's Fig. 4: one line per KM, one marker per event type.

The paper's figure shows, for each key manager, when the request arrived, when the user was
authenticated, when the configuration arrived, when key material was ready, when keys were
relayed and when the response went out. :func:`render_timeline` draws exactly that from
``events.jsonl`` (PNG via matplotlib, and a self-contained HTML page with the SVG and a
filterable table of the events). matplotlib is the optional ``plots`` extra: without it the
HTML page keeps its table and says how to get the plot.
"""

from __future__ import annotations

import html
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyplane.demo.fig4 import FIG4_MARKERS, layout
from keyplane.events import Event, EventType
from keyplane.extras import MissingDependency, require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["FIG4_MARKERS", "render_timeline"]

def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (raises MissingDependency without the extra)."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    return require("matplotlib.pyplot")


_DPI = 100
_LEFT, _RIGHT, _TOP, _BOTTOM = 70, 290, 40, 50  # margins around the plot area, pixels


def _session_labels(events: Sequence[Event]) -> dict[str, str]:
    """Session id -> "sae2 -> sae3 (1a2b3c4d)" from the first request of each session."""
    out: dict[str, str] = {}
    for e in events:
        if e.session and e.session not in out and e.type is EventType.request_arrived:
            out[e.session] = f"{e.data.get('sae', '?')} -> {e.data.get('peer', '?')} " \
                             f"({e.session[:8]})"
    return out


def _figure(plt: Any, events: Sequence[Event], title: str) -> Figure:
    lay = layout(events)
    w = lay.width_px + _LEFT + _RIGHT
    h = max(lay.height_px, 60.0) + _TOP + _BOTTOM
    fig: Figure = plt.figure(figsize=(w / _DPI, h / _DPI), dpi=_DPI)
    # one data unit = one pixel of the plot area, so the layout's geometry is the drawing's
    ax = fig.add_axes((_LEFT / w, _BOTTOM / h, lay.width_px / w, max(lay.height_px, 60.0) / h))
    ax.set_xlim(0, lay.width_px)
    ax.set_ylim(max(lay.height_px, 60.0), 0)
    size = (lay.marker_px * 72 / _DPI) ** 2
    for etype, (label, marker, colour) in FIG4_MARKERS.items():
        mine = [m for m in lay.markers if m.event.type is etype]
        if mine:
            ax.scatter([m.x_px for m in mine], [m.y_px for m in mine], marker=marker,
                       facecolors=colour, edgecolors=[m.ring for m in mine], linewidths=0.9,
                       s=size, label=label, zorder=3)
    for top, height in zip(lay.lane_top_px, lay.lane_height_px, strict=True):
        ax.axhline(top, color="#cccccc", lw=0.8, zorder=1)
        ax.axhline(top + height / 2, color="#eeeeee", lw=0.6, zorder=0)
    ax.set_yticks([t + hh / 2 for t, hh in zip(lay.lane_top_px, lay.lane_height_px,
                                                strict=True)],
                  [n.upper() for n in lay.lanes])
    span_ms = (lay.width_px - 2 * lay.marker_px) / lay.px_per_s * 1000
    step = _nice_step(span_ms / 8)
    ticks_ms = [i * step for i in range(int(span_ms // step) + 1)]
    ax.set_xticks([lay.marker_px + t / 1000 * lay.px_per_s for t in ticks_ms],
                  [f"{t:g}" for t in ticks_ms])
    ax.set_xlabel("time since the run's first event (ms)")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(title)
    handles, labels = ax.get_legend_handles_labels()
    names = _session_labels(events)
    from matplotlib.lines import Line2D

    for sid, ring in lay.sessions:
        handles.append(Line2D([], [], marker="o", linestyle="", markerfacecolor="white",
                              markeredgecolor=ring, markeredgewidth=1.5))
        labels.append(f"session {names.get(sid, sid[:8])}" if sid else "link alarms")
    ax.legend(handles, labels, loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8,
              frameon=False)
    return fig


def _nice_step(raw: float) -> float:
    """1, 2 or 5 times a power of ten, at least ``raw``."""
    if raw <= 0:
        return 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    return float(next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw))


def render_timeline(events: Sequence[Event], out_dir: str | Path, *,
                    title: str = "keyplane event timeline (paper Fig. 4)"
                    ) -> tuple[Path | None, Path]:
    """Write ``timeline.png`` and ``timeline.html`` into ``out_dir``; return their paths.

    Without matplotlib (the ``plots`` extra) no PNG is written (None is returned for it) and
    the HTML page says how to get the plot.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    png: Path | None = None
    try:
        plt = _pyplot()
    except MissingDependency as exc:
        logger.warning("timeline.png not written: %s", exc)
        svg = f"<p><em>{html.escape(str(exc))}</em></p>"
    else:
        fig = _figure(plt, events, title)
        png = out / "timeline.png"
        fig.savefig(png)
        svg_buf = io.StringIO()
        fig.savefig(svg_buf, format="svg")
        plt.close(fig)
        svg = svg_buf.getvalue()
        svg = svg[svg.find("<svg"):]
    t0 = min((e.t for e in events), default=0.0)
    rows = "\n".join(
        f"<tr><td>{(e.t - t0) * 1000:.3f}</td><td>{html.escape(e.node or '')}</td>"
        f"<td>{html.escape(e.element)}</td><td>{html.escape(e.type.value)}</td>"
        f"<td>{html.escape((e.session or '')[:8])}</td>"
        f"<td><code>{html.escape(_brief(e))}</code></td></tr>"
        for e in events)
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>
body{{font-family:system-ui,sans-serif;margin:1.5rem;color:#222}}
table{{border-collapse:collapse;font-size:12px}}
td,th{{border-bottom:1px solid #eee;padding:2px 8px;text-align:left}}
input{{margin:0.5rem 0;padding:4px;width:24rem}}
</style></head><body>
<h1>{html.escape(title)}</h1>
<p>One line per key manager; one marker per event type, as in Fig. 4 of Lopez et al.,
IEEE Network 2025 (face colour: the event; ring colour and sub-row: the session). Times in the
plot and in the table below are from the run's first event. {len(events)} events.</p>
{svg}
<h2>Events</h2>
<input id="q" placeholder="filter (node, element, type, session)" oninput="f()">
<table id="t"><thead><tr><th>t (ms)</th><th>node</th><th>element</th><th>type</th><th>session</th>
<th>data</th></tr></thead><tbody>
{rows}
</tbody></table>
<script>
function f(){{const q=document.getElementById('q').value.toLowerCase();
for(const r of document.querySelectorAll('#t tbody tr'))
r.style.display=r.textContent.toLowerCase().includes(q)?'':'none';}}
</script></body></html>
"""
    page_path = out / "timeline.html"
    page_path.write_text(page, encoding="utf-8")
    return png, page_path


def _brief(e: Event) -> str:
    parts = [f"{k}={v}" for k, v in e.data.items() if not isinstance(v, dict | list)]
    return ", ".join(parts)[:160]
