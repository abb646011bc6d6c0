"""Analytic model of entanglement distribution over a chain of quantum repeaters.

Used by the entanglement service (:mod:`keyplane.control.entanglement`) to decide whether a
demand can be met (fidelity, deadline) and to emulate what the chain delivers. Nothing is
simulated photon by photon: every quantity below is a closed form or a sum, cited.

**States.** Every entangled pair is a Werner state of parameter ``w`` (``rho = w |Phi+><Phi+|
+ (1 - w) I/4``), fidelity ``F = (1 + 3 w) / 4``. Werner states are closed under the three
operations below, which keeps the model exact within that family (Dür, Briegel, Cirac,
Zoller, PRA 59, 169 (1999); Briegel et al., PRL 81, 5932 (1998)).

**Elementary links.** Each link of length ``L`` has a heralding station in the middle
(Barrett-Kok double click): an attempt succeeds with probability
``p = p_herald * eta_arm^2`` where ``eta_arm = 10^(-alpha (L/2) / 10) * eta_det`` is the
transmittance of each half of the link (Barrett and Kok, PRA 71, 060310 (2005);
``p_herald = 1/2`` for linear-optics Bell measurement). Attempts repeat every
``max(1/repetition_rate, L / c_fibre)`` seconds: the heralding signal must come back before
the memory is reused (Sangouard, Simon, de Riedmatten, Gisin, RMP 83, 33 (2011), §II).

**Memories.** A stored pair depolarizes: ``w(t) = w(0) exp(-t / T_coh)`` per memory holding
one half, so a pair whose two halves wait ``t`` decays as ``exp(-2 t / T_coh)``.

**Swapping** two Werner pairs gives ``w = w1 w2`` (ideal Bell measurement), times the gate
factor ``w_gate`` per swap, and succeeds with ``p_swap``.

**Purification** (BBPSSW, Bennett et al., PRL 76, 722 (1996)) of two copies of fidelity
``F``: success ``p = F^2 + 2 F (1-F)/3 + 5 ((1-F)/3)^2``, output fidelity
``(F^2 + ((1-F)/3)^2) / p``. Each round consumes two pairs for one.

**Chain.** ``n`` elementary links are generated in parallel and swapped once all are ready
(swap-when-all-ready; "swap-asap" is not modelled). The expected number of attempts until
all ``n`` independent geometric processes have succeeded is
``E[max] = sum_{k=1..n} C(n,k) (-1)^{k+1} / (1 - (1-p)^k)`` (the maximum of iid geometric
variables; Bernardes, Praxmeyer, van Loock, PRA 83, 012323 (2011)). While the chain waits,
links that succeeded early decay: the expected storage time of a link is taken as
``E[max] - E[single]`` attempts (a mean-field approximation: exact for ``n = 1``).

Limits: no multiplexing, no quantum error correction, one pair per link at a time, every
link treated as the weakest one of the chain for the waiting time. docs/quantum-networking.md
states them with the references.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from functools import cached_property

__all__ = [
    "C_FIBRE_KM_S",
    "ChainEstimate",
    "ElementaryLink",
    "PacketSource",
    "RepeaterChain",
    "bbpssw",
    "decohere",
    "expected_max_geometric",
    "fidelity_of",
    "werner_of",
]

C_FIBRE_KM_S = 2.0e5
"""Speed of light in fibre, km/s (refractive index about 1.5)."""


def fidelity_of(w: float) -> float:
    """Fidelity with |Phi+> of a Werner state of parameter ``w``."""
    return (1.0 + 3.0 * w) / 4.0


def werner_of(fidelity: float) -> float:
    """Werner parameter of a Werner state of fidelity ``fidelity``."""
    return (4.0 * fidelity - 1.0) / 3.0


def decohere(w: float, wait_s: float, coherence_time_s: float, memories: int = 2) -> float:
    """``w`` after ``memories`` halves (default both) waited ``wait_s`` in depolarizing
    memories of coherence time ``coherence_time_s``."""
    if wait_s <= 0.0 or math.isinf(coherence_time_s):
        return w
    return w * math.exp(-memories * wait_s / coherence_time_s)


def bbpssw(fidelity: float) -> tuple[float, float]:
    """One BBPSSW round on two Werner copies: (success probability, output fidelity)."""
    f, g = fidelity, (1.0 - fidelity) / 3.0
    p = f * f + 2.0 * f * g + 5.0 * g * g
    return p, (f * f + g * g) / p


def expected_max_geometric(p: float, n: int) -> float:
    """Expected attempts until ``n`` independent links (success ``p`` each) all succeeded.

    Exact by inclusion-exclusion up to 60 links; beyond, the alternating sum loses
    precision and the standard approximation ``H_n / -ln(1-p) + 1/2`` is used.

    Raises:
        ValueError: ``p`` outside (0, 1] or ``n < 1``.
    """
    if not 0.0 < p <= 1.0 or n < 1:
        raise ValueError(f"need 0 < p <= 1 and n >= 1, got p={p}, n={n}")
    if p == 1.0:
        return 1.0
    q = 1.0 - p
    if n > 60:
        return sum(1.0 / k for k in range(1, n + 1)) / -math.log1p(-p) + 0.5
    return sum(math.comb(n, k) * (-1.0) ** (k + 1) / (1.0 - q ** k) for k in range(1, n + 1))


@dataclass(frozen=True)
class ElementaryLink:
    """One heralded elementary link (midpoint station).

    Args:
        length_km: fibre length between the two memories.
        attenuation_db_per_km: fibre loss.
        detector_efficiency: heralding detector efficiency (each arm).
        herald_probability: Bell-measurement success given both photons arrive (1/2 for
            linear optics).
        repetition_rate_hz: attempt rate of the sources.
        initial_fidelity: fidelity of a freshly heralded pair.
    """

    length_km: float
    attenuation_db_per_km: float = 0.2
    detector_efficiency: float = 0.9
    herald_probability: float = 0.5
    repetition_rate_hz: float = 1e6
    initial_fidelity: float = 0.97

    @property
    def arm_transmittance(self) -> float:
        """Transmittance of one half of the link, detector included."""
        return float(10.0 ** (-self.attenuation_db_per_km * self.length_km / 20.0)
                     * self.detector_efficiency)

    @property
    def success_probability(self) -> float:
        """Probability that one attempt heralds a pair."""
        return self.herald_probability * self.arm_transmittance ** 2

    @property
    def attempt_period_s(self) -> float:
        """Time per attempt: the source period or the heralding round trip, the longer."""
        return max(1.0 / self.repetition_rate_hz, self.length_km / C_FIBRE_KM_S)

    @property
    def rate_hz(self) -> float:
        """Expected heralded pairs per second."""
        return self.success_probability / self.attempt_period_s


@dataclass(frozen=True)
class ChainEstimate:
    """What a chain delivers for one end-to-end pair, in expectation."""

    pair_time_s: float
    """Expected time to one end-to-end pair (purification rounds included)."""
    fidelity: float
    """Expected fidelity of that pair when it is delivered."""
    purification_rounds: int
    """End-to-end BBPSSW rounds applied (0: none)."""

    @property
    def rate_hz(self) -> float:
        """End-to-end pairs per second."""
        return 1.0 / self.pair_time_s


@dataclass(frozen=True)
class RepeaterChain:
    """Elementary links joined by entanglement swaps at the repeater nodes between them.

    Args:
        links: the elementary links, in path order.
        coherence_time_s: memory coherence time (depolarizing).
        swap_probability: success probability of one entanglement swap.
        swap_gate_werner: Werner factor each swap multiplies in (1: ideal gates).
    """

    links: tuple[ElementaryLink, ...]
    coherence_time_s: float = 1.0
    swap_probability: float = 1.0
    swap_gate_werner: float = 0.99

    def __post_init__(self) -> None:
        if not self.links:
            raise ValueError("a repeater chain needs at least one elementary link")

    def estimate(self, purification_rounds: int = 0) -> ChainEstimate:
        """Expected time and fidelity of one end-to-end pair after ``purification_rounds``
        rounds of end-to-end BBPSSW (each round takes two pairs, succeeds with its
        probability, and the first pair decays while the second is made)."""
        raw = self._raw
        t, f = raw.pair_time_s, raw.fidelity
        for _ in range(purification_rounds):
            p, f_out = bbpssw(f)
            t = 2.0 * t / p
            f = fidelity_of(decohere(werner_of(f_out), raw.pair_time_s, self.coherence_time_s,
                                     memories=1))
        return ChainEstimate(t, f, purification_rounds)

    def best_for(self, min_fidelity: float, max_rounds: int = 3) -> ChainEstimate | None:
        """The fastest estimate reaching ``min_fidelity`` (None: no round count does)."""
        for rounds in range(max_rounds + 1):
            est = self.estimate(rounds)
            if est.fidelity >= min_fidelity:
                return est
        return None

    @cached_property
    def _raw(self) -> ChainEstimate:
        period = max(link.attempt_period_s for link in self.links)
        p_weakest = min(link.success_probability for link in self.links)
        n = len(self.links)
        attempts_all = expected_max_geometric(p_weakest, n)
        wait_s = max(0.0, attempts_all - 1.0 / p_weakest) * period
        w = 1.0
        for link in self.links:
            w *= decohere(werner_of(link.initial_fidelity), wait_s, self.coherence_time_s)
        swaps = n - 1
        w *= self.swap_gate_werner ** swaps
        # a failed swap loses the chain: start again (geometric in the swap success)
        pair_time = attempts_all * period / self.swap_probability ** swaps
        # the swap outcomes travel the chain once before the pair is usable
        pair_time += sum(link.length_km for link in self.links) / C_FIBRE_KM_S
        return ChainEstimate(pair_time, fidelity_of(max(w, 0.0)), 0)


class PacketSource:
    """The emulated chain of one demand: makes packets of ``packet_size`` coexisting pairs.

    Each end-to-end pair is sampled under the model above: every elementary link's attempts
    are geometric, the chain waits for the slowest, each swap succeeds with its
    probability (a failure restarts the pair), each purification round takes two pairs and
    succeeds with its BBPSSW probability. Time only passes while the scheduler grants the
    chain (:meth:`run`), so a demand never progresses outside its booked slots.

    Args:
        chain: the repeater chain of the demand's path.
        rounds: end-to-end purification rounds.
        packet_size: pairs per packet.
        rng: the random source (seeded by the caller).
    """

    def __init__(self, chain: RepeaterChain, rounds: int, packet_size: int,
                 rng: random.Random) -> None:
        self.chain = chain
        self.rounds = rounds
        self.packet_size = packet_size
        self._rng = rng
        self._banked_s = 0.0
        self._next_s = self._packet_time()

    def run(self, granted_s: float) -> int:
        """Let the chain work for ``granted_s`` seconds; the packets completed meanwhile."""
        self._banked_s += granted_s
        done = 0
        while self._banked_s >= self._next_s:
            self._banked_s -= self._next_s
            self._next_s = self._packet_time()
            done += 1
        return done

    def _packet_time(self) -> float:
        return sum(self._pair_time(self.rounds) for _ in range(self.packet_size))

    def _pair_time(self, rounds: int) -> float:
        if rounds == 0:
            return self._raw_pair_time()
        while True:
            t = self._pair_time(rounds - 1) + self._pair_time(rounds - 1)
            p, _ = bbpssw(self.chain.estimate(rounds - 1).fidelity)
            if self._rng.random() < p:
                return t

    def _raw_pair_time(self) -> float:
        links = self.chain.links
        period = max(link.attempt_period_s for link in links)
        swaps = len(links) - 1
        total = 0.0
        while True:
            attempts = max(_geometric(self._rng, link.success_probability) for link in links)
            total += attempts * period
            if all(self._rng.random() < self.chain.swap_probability for _ in range(swaps)):
                return total + sum(link.length_km for link in links) / C_FIBRE_KM_S


def _geometric(rng: random.Random, p: float) -> int:
    """Attempts until the first success (>= 1), success probability ``p`` per attempt."""
    if p >= 1.0:
        return 1
    u = 1.0 - rng.random()  # in (0, 1]
    return max(1, math.ceil(math.log(u) / math.log1p(-p)))
