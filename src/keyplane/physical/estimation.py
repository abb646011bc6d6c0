"""Rates against which the twin is measured: the asymptotic decoy-state rate and PLOB.

A block's secure length is the finite-key bound of Lim et al. 2014
(:mod:`keyplane.physical.finite_key`), computed from the block's own counts; the
asymptotic rate (infinite decoys, infinite key) of :mod:`keyplane.physical.analytic` is its
limit's GLLP counterpart. PLOB bound (Pirandola et al., Nat. Commun. 8, 15043 (2017)): no
repeaterless protocol beats ``-log2(1 - eta)`` bits per pulse.
"""

from __future__ import annotations

import math

from keyplane.physical.analytic import analytic_key_rate
from keyplane.physical.physics import LinkPhysics

__all__ = ["asymptotic_key_rate", "plob_bound"]


def asymptotic_key_rate(physics: LinkPhysics, ec_efficiency: float = 1.16) -> float:
    """Decoy-state secret key rate in bits per pulse (infinite decoys, infinite key): GLLP
    with the vacuum term, faults and eavesdropper included
    (:func:`keyplane.physical.analytic.analytic_key_rate`, no abort threshold).

    Args:
        physics: the link.
        ec_efficiency: ``f`` of the error correction.
    """
    return analytic_key_rate(physics, formula="gllp-vacuum", ec_efficiency=ec_efficiency)


def plob_bound(eta: float) -> float:
    """PLOB repeaterless bound ``-log2(1 - eta)`` in bits per pulse."""
    if eta >= 1.0:
        return math.inf
    return -math.log2(1.0 - eta)
