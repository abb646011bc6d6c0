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
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from keyplane.events import Event, EventType
from keyplane.extras import MissingDependency, require

if TYPE_CHECKING:
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["FIG4_MARKERS", "render_timeline"]

#: event type -> (label, marker, colour): the paper's Fig. 4 legend plus the control plane's.
FIG4_MARKERS: dict[EventType, tuple[str, str, str]] = {
    EventType.request_arrived: ("request", "o", "#1f77b4"),
    EventType.authenticated: ("authenticated", "s", "#2ca02c"),
    EventType.configured: ("configuration", "D", "#9467bd"),
    EventType.session_operative: ("operative", "^", "#17becf"),
    EventType.key_material_ready: ("key material ready", "*", "#ff7f0e"),
    EventType.key_relayed: ("key relayed", ">", "#8c564b"),
    EventType.key_delivered: ("response (key delivered)", "P", "#d62728"),
    EventType.session_closed: ("session closed", "x", "#7f7f7f"),
    EventType.alarm: ("alarm", "X", "#e377c2"),
    EventType.session_rerouted: ("rerouted", "v", "#bcbd22"),
}


def _lanes(events: Sequence[Event]) -> list[str]:
    nodes = sorted({e.node for e in events if e.node}, key=lambda n: (len(n), n))
    return nodes


def _pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (raises MissingDependency without the extra)."""
    matplotlib = require("matplotlib")
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.fonttype"] = "none"
    return require("matplotlib.pyplot")


def _figure(plt: Any, events: Sequence[Event], title: str) -> Figure:
    shown = [e for e in events if e.type in FIG4_MARKERS and e.node]
    lanes = _lanes(shown) or ["-"]
    t0 = min((e.t for e in shown), default=0.0)
    fig: Figure
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.55 * len(lanes)), dpi=110)
    y = {n: i for i, n in enumerate(lanes)}
    for etype, (label, marker, colour) in FIG4_MARKERS.items():
        pts = [((e.t - t0) * 1000.0, y[e.node]) for e in shown if e.type is etype and e.node]
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.scatter(xs, ys, marker=marker, color=colour, label=label, s=46, zorder=3,
                       edgecolors="none" if marker not in ("x",) else None)
    ax.set_yticks(range(len(lanes)), [n.upper() for n in lanes])
    ax.set_ylim(-0.6, len(lanes) - 0.4)
    ax.invert_yaxis()
    ax.set_xlabel("time since the first request (ms)")
    ax.grid(axis="x", alpha=0.3)
    for i in range(len(lanes)):
        ax.axhline(i, color="#dddddd", lw=0.8, zorder=1)
    ax.set_title(title)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


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
IEEE Network 2025. {len(events)} events.</p>
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
