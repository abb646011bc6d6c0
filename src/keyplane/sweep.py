"""``keyplane sweep``: secret key rate against distance, measured and bounded.

For each distance the link (its physics from the topology, only ``length_km`` changes) runs
on a virtual clock, in the emulated mode (decoy-state BB84 with the full post-processing)
and in the analytic mode, each for the same number of blocks; its rate is the secret bits
its sinks received over the clock's time, as in ``keyplane run``. Beside them, two curves:

* **GLLP** with infinitely many decoys (:func:`keyplane.physical.estimation.
  asymptotic_key_rate`, the physical layer's own formula, times the repetition rate);
* **PLOB**, the repeaterless bound ``-log2(1 - eta)`` per pulse
  (:func:`keyplane.physical.estimation.plob_bound`) with ``eta`` the fibre's transmittance,
  times the repetition rate: no QKD link over that fibre can beat it.

Writes ``sweep.csv`` (one row per distance) and ``sweep.png`` (log scale; matplotlib, the
``plots`` extra). A point past the cut-off has rate 0 (every block aborted or none filled
within ``max_frames``); the plot leaves it out of the log scale, the CSV keeps it.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from keyplane.clock import VirtualClock
from keyplane.config import QuantumLink
from keyplane.events import EventStream, EventType, MemorySink
from keyplane.extras import require
from keyplane.fileperms import ensure_private_dir, open_private, restrict
from keyplane.physical import LinkPhysics, LinkRunner, MemoryKeySink
from keyplane.physical.estimation import asymptotic_key_rate, plob_bound

__all__ = ["SweepPoint", "SweepSettings", "bound_rates", "measure_rate", "run_sweep",
           "write_csv", "write_png"]


@dataclass(frozen=True)
class SweepSettings:
    """What a sweep runs.

    Attributes:
        distances_km: the fibre lengths.
        blocks: blocks per distance and mode (delivered or aborted).
        max_frames: frames per distance and mode at most (a link past its cut-off never
            fills a block).
        seed: the emulation's seed.
    """

    distances_km: tuple[float, ...]
    blocks: int = 4
    max_frames: int = 20_000
    seed: int = 1


@dataclass(frozen=True)
class SweepPoint:
    """One distance: measured rates (emulated, analytic mode) and the two curves, bit/s."""

    distance_km: float
    emulated_skr_bps: float
    emulated_qber: float | None
    emulated_blocks: int
    emulated_aborted: int
    analytic_skr_bps: float
    gllp_bps: float
    plob_bps: float


@dataclass(frozen=True)
class _Measured:
    skr_bps: float
    qber: float | None
    delivered: int
    aborted: int


async def measure_rate(link: QuantumLink, *, blocks: int, max_frames: int, seed: int
                       ) -> _Measured:
    """Run ``link`` on a virtual clock until ``blocks`` blocks ended (or ``max_frames``);
    return the secret bits both sinks got per second of the clock, the mean QBER and the
    block counts.

    Raises:
        AssertionError: the two ends' keys differ (never: the twin's invariant).
    """
    clock = VirtualClock()
    alice, bob = MemoryKeySink(), MemoryKeySink()
    blocks_seen = MemorySink()
    runner = LinkRunner(link, clock=clock, seed=seed, alice_sink=alice, bob_sink=bob,
                        events=EventStream(clock, [blocks_seen]))
    frames = 0
    async with runner:
        st = runner.stats
        while st.delivered_blocks + st.aborted_blocks < blocks and frames < max_frames:
            await clock.advance(runner.frame_duration_s)
            frames += 1
    a, b = alice.drain(), bob.drain()
    assert [(k.block_id, k.material) for k in a] == [(k.block_id, k.material) for k in b]
    ended = blocks_seen.of_type(EventType.link_block, EventType.link_block_aborted)
    delivered = blocks_seen.of_type(EventType.link_block)
    qbers = [float(e.data["qber"]) for e in delivered if e.data.get("qber") is not None]
    if len(ended) >= 2:
        # from the end of the first block to the end of the last: the start-up (the two
        # ends meeting, the first frames) is not a rate
        bits = sum(int(e.data.get("secret_bits") or 0) for e in delivered if e is not ended[0]
                   and e.t > ended[0].t)
        skr = bits / max(ended[-1].t - ended[0].t, 1e-12)
    else:
        skr = 8 * sum(len(k.material) for k in a) / max(clock.now(), 1e-12)
    return _Measured(skr_bps=skr,
                     qber=(sum(qbers) / len(qbers)) if qbers else None,
                     delivered=st.delivered_blocks, aborted=st.aborted_blocks)


def bound_rates(link: QuantumLink) -> tuple[float, float]:
    """``(GLLP with infinite decoys, PLOB)`` of ``link``, bit/s."""
    physics = LinkPhysics.from_link(link)
    gllp = asymptotic_key_rate(physics) * link.repetition_rate_hz
    eta_fibre = 10.0 ** (-link.attenuation_db_per_km * link.length_km / 10.0)
    return gllp, plob_bound(eta_fibre) * link.repetition_rate_hz


async def run_sweep(base: QuantumLink, settings: SweepSettings,
                    progress: Callable[[SweepPoint], None] | None = None) -> list[SweepPoint]:
    """Measure ``base`` at every distance of ``settings`` (see the module docstring)."""
    points = []
    for d in settings.distances_km:
        emulated = await measure_rate(
            base.model_copy(update={"length_km": d, "protocol": "bb84-decoy"}),
            blocks=settings.blocks, max_frames=settings.max_frames, seed=settings.seed)
        analytic = await measure_rate(
            base.model_copy(update={"length_km": d, "protocol": "analytic"}),
            blocks=settings.blocks, max_frames=settings.max_frames, seed=settings.seed)
        gllp, plob = bound_rates(base.model_copy(update={"length_km": d}))
        point = SweepPoint(distance_km=d, emulated_skr_bps=emulated.skr_bps,
                           emulated_qber=emulated.qber, emulated_blocks=emulated.delivered,
                           emulated_aborted=emulated.aborted,
                           analytic_skr_bps=analytic.skr_bps, gllp_bps=gllp, plob_bps=plob)
        points.append(point)
        if progress is not None:
            progress(point)
    return points


def write_csv(points: Sequence[SweepPoint], path: Path) -> Path:
    """One row per distance, the :class:`SweepPoint` fields as columns."""
    with open_private(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.DictWriter(fh, fieldnames=[f.name for f in fields(SweepPoint)])
        w.writeheader()
        for p in points:
            w.writerow(asdict(p))
    return path


def write_png(points: Sequence[SweepPoint], path: Path, *, title: str) -> Path:
    """The four curves on a log scale against distance.

    Raises:
        MissingDependency: matplotlib (the ``plots`` extra) is not installed.
    """
    mpl = require("matplotlib")
    mpl.use("Agg")
    plt = require("matplotlib.pyplot")
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    d = [p.distance_km for p in points]

    def positive(values: list[float]) -> list[float]:  # what a log scale can show
        return [v if v > 0 and math.isfinite(v) else math.nan for v in values]

    ax.plot(d, positive([p.plob_bps for p in points]), "k--", label="PLOB bound -log2(1-η)")
    ax.plot(d, positive([p.gllp_bps for p in points]), "-", color="#1f77b4",
            label="GLLP, infinite decoys")
    ax.plot(d, positive([p.analytic_skr_bps for p in points]), "s", color="#2ca02c",
            mfc="none", label="analytic mode (measured)")
    ax.plot(d, positive([p.emulated_skr_bps for p in points]), "o", color="#d62728",
            label="emulated BB84 + post-processing (measured)")
    ax.set_yscale("log")
    ax.set_xlabel("fibre length (km)")
    ax.set_ylabel("secret key rate (bit/s)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    ensure_private_dir(path.parent)
    fig.savefig(path)
    plt.close(fig)
    restrict(path)
    return path
