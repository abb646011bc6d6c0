"""``z_basis_probability: auto``: the basis bias chosen from the link's finite-key curve at
half its block size (keyplane.physical.analytic.auto_z_basis; figures in docs/physical.md)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keyplane.clock import VirtualClock
from keyplane.config import DecoySettings, Eavesdropper, PostProcessing, QuantumLink, load_topology
from keyplane.physical import LinkPhysics, LinkRunner, MemoryKeySink
from keyplane.physical.analytic import AUTO_Z_GRID, finite_key_rate

EXAMPLES = Path(__file__).resolve().parents[3] / "examples"


def _link(length_km: float, block_bits: int, **kw: object) -> QuantumLink:
    z = kw.pop("z", "auto")
    return QuantumLink(endpoints=("a", "b"), length_km=length_km, **kw,  # type: ignore[arg-type]
                       postprocessing=PostProcessing(block_size_bits=block_bits,
                                                     z_basis_probability=z))  # type: ignore[arg-type]


def _rate(p: LinkPhysics, n: int, z: float | None = None) -> float:
    if z is not None:
        p = p.with_changes(z_basis_probability=z)
    return finite_key_rate(p, n, eps_sec=1e-10)


def test_the_examples_small_block_links_keep_unbiased_bases() -> None:
    links = [link for path in sorted(EXAMPLES.glob("*.yaml"))
             for link in load_topology(path).links]
    small = [link for link in links if link.postprocessing.block_size_bits <= 200_000]
    assert len(small) >= 10  # the demo's links: the default 10^5-bit blocks
    assert {LinkPhysics.from_link(link).z_basis_probability for link in small} == {0.5}


@pytest.mark.parametrize("z", [0.5, 0.7, 0.9])
def test_an_explicit_basis_probability_wins(z: float) -> None:
    for block in (100_000, 1_000_000, 10_000_000):
        assert LinkPhysics.from_link(_link(25.0, block, z=z)).z_basis_probability == z


@pytest.mark.parametrize("length_km", [10.0, 50.0, 100.0])
@pytest.mark.parametrize("block", [1_000_000, 10_000_000])
def test_auto_biases_large_blocks_and_still_wins_with_a_point_more_qber(
        length_km: float, block: int) -> None:
    p = LinkPhysics.from_link(_link(length_km, block))
    assert p.z_basis_probability in AUTO_Z_GRID and p.z_basis_probability > 0.5
    assert _rate(p, block) >= 1.4 * _rate(p, block, 0.5)
    # the margin of judging at half the block: a noisier link than configured still gets
    # more key from the chosen bias than from unbiased bases
    noisy = p.with_changes(misalignment=p.misalignment + 0.01)
    assert _rate(noisy, block) > _rate(noisy, block, 0.5) > 0


def test_auto_gives_larger_blocks_more_bias_and_noisy_links_less() -> None:
    zs = [LinkPhysics.from_link(_link(50.0, n)).z_basis_probability
          for n in (100_000, 400_000, 1_000_000, 10_000_000)]
    assert zs[0] == 0.5 and zs == sorted(zs) and zs[-1] > zs[1]
    assert (LinkPhysics.from_link(_link(50.0, 1_000_000, misalignment=0.05))
            .z_basis_probability == 0.5)
    # intensities the bound does not cover: unbiased, no error
    weak = _link(50.0, 1_000_000, decoy=DecoySettings(
        mu_signal=0.15, mu_decoy=0.1, mu_vacuum=0.06))
    assert LinkPhysics.from_link(weak).z_basis_probability == 0.5


def test_auto_ignores_the_eavesdropper_and_the_measured_protocols() -> None:
    clear = LinkPhysics.from_link(_link(50.0, 1_000_000))
    tapped = LinkPhysics.from_link(_link(50.0, 1_000_000, eavesdropper=Eavesdropper(
        fraction=0.5)))
    assert tapped.z_basis_probability == clear.z_basis_probability > 0.5
    assert tapped.eavesdropper is not None and clear.eavesdropper is None
    assert (LinkPhysics.from_link(_link(50.0, 1_000_000, protocol="analytic"))
            .z_basis_probability == clear.z_basis_probability)
    for protocol in ("mdi-qkd", "tf-qkd", "bbm92"):  # their bounds are not decoy BB84's
        link = _link(50.0, 1_000_000).model_copy(update={"protocol": protocol})
        assert LinkPhysics.from_link(link).z_basis_probability == 0.5


def test_twin_with_auto_bias_beats_the_unbiased_curve_on_large_blocks() -> None:
    # the twin itself, 10^6-bit blocks at 10 km: at least 0.8x its own curve (issue 22)
    # and more key per pulse than unbiased bases' curve
    link = _link(10.0, 1_000_000)
    physics = LinkPhysics.from_link(link)

    async def run() -> float:
        clock = VirtualClock()
        sa, sb = MemoryKeySink(), MemoryKeySink()
        async with LinkRunner(link, clock=clock, seed=9, alice_sink=sa, bob_sink=sb) as r:
            while r.stats.delivered_blocks + r.stats.aborted_blocks < 2:
                await clock.advance(r.frame_duration_s)
            pulses = r.stats.sifted_bits / physics.expected_sifted_fraction()
            measured = r.stats.delivered_bits / pulses
        assert [(b.block_id, b.material) for b in sa.drain()] == [
            (b.block_id, b.material) for b in sb.drain()]
        return measured

    measured = asyncio.run(run())
    assert measured >= 0.8 * _rate(physics, 1_000_000)
    assert measured > 1.3 * _rate(physics, 1_000_000, 0.5)
