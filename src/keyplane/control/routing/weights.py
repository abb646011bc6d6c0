"""Link weight functions of the Routing Element (the formula is in
:class:`~keyplane.control.settings.RoutingSettings`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from keyplane.control.settings import RoutingSettings
from keyplane.store.topology import LinkMetrics

__all__ = ["MetricWeight", "WeightFunction", "hop_weight"]

WeightFunction = Callable[[LinkMetrics | None], float]
"""Maps a link's latest metrics (``None``: never measured) to a positive weight."""


def hop_weight(_: LinkMetrics | None) -> float:
    """Every link weighs 1: shortest hop count (the paper's experiment)."""
    return 1.0


@dataclass(frozen=True)
class MetricWeight:
    """The default weight function; the formula is in :class:`RoutingSettings`."""

    skr_ref_bps: float = 1_000.0
    skr_coef: float = 1.0
    qber_coef: float = 10.0
    sessions_coef: float = 0.1
    buffer_ref_bits: float = 100_000.0
    buffer_coef: float = 0.5

    @classmethod
    def from_settings(cls, s: RoutingSettings) -> MetricWeight:
        """The weight function ``s`` describes."""
        return cls(skr_ref_bps=s.skr_ref_bps, skr_coef=s.skr_coef, qber_coef=s.qber_coef,
                   sessions_coef=s.sessions_coef, buffer_ref_bits=s.buffer_ref_bits,
                   buffer_coef=s.buffer_coef)

    def __call__(self, m: LinkMetrics | None) -> float:
        if m is None:
            return 1.0
        w = 1.0
        if m.skr_bps is not None:
            w += self.skr_coef * self.skr_ref_bps / max(m.skr_bps, 1.0)
        if m.qber is not None:
            w += self.qber_coef * m.qber
        w += self.sessions_coef * m.sessions
        w += self.buffer_coef * self.buffer_ref_bits / (m.buffer_bits + self.buffer_ref_bits)
        return w
