"""Constants of the channel model shared by the emulator (:mod:`~keyplane.physical.physics`)
and its closed forms (:mod:`~keyplane.physical.analytic`), in a module of their own: physics
resolves ``z_basis_probability: auto`` with analytic's finite-key curve, so analytic must not
import physics at run time (an import cycle)."""

DARK_COUNT_ERROR = 0.5
"""``e0``: a dark count gives a random bit."""
