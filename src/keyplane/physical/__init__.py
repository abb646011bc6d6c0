"""The emulated QKD physical layer (digital twin): decoy-state BB84 links with real
post-processing, producing continuous identical key streams at both ends of each link.

Map (see docs/physical.md):

* :mod:`.physics`     link physics and the per-frame emulator (decoy intensities, Eve)
* :mod:`.sifting`     sifting into key and test basis, the sifted-key buffer
* :mod:`.finite_key`  finite-key security of a block (Lim et al. 2014), reference curves
* :mod:`.analytic`    expected statistics with every fault, asymptotic GLLP rates
* :mod:`.estimation`  asymptotic rate, PLOB bound
* :mod:`.cascade`     vectorized Cascade (and its per-bit reference)
* :mod:`.hashing`     Toeplitz privacy amplification by FFT, polynomial verification tag
* :mod:`.wire`        messages between QKD modules and link control
* :mod:`.channel`     ClassicalChannel: in-process and bus-backed
* :mod:`.modules`     Alice's and Bob's QKD modules (the protocol shell)
* :mod:`.runner`      LinkRunner: pacing on the clock, sinks, faults
* :mod:`.reporting`   LinkReporter: a link's events and rate-bounded telemetry
* :mod:`.frames`      block ids across restarts, per-end seeds, the runner's counters
* :mod:`.analytic_stream` the analytic mode's key stream (no per-bit simulation)
* :mod:`.network`     PhysicalNetwork: every link of a topology
* :mod:`.sink`        LinkKeySink protocol and MemoryKeySink

The package imports its modules on first use (PEP 562): ``keyplane link --help`` and the
modules that need one submodule do not pay for numpy and scipy up front.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from keyplane.lazy import lazy_exports

if TYPE_CHECKING:
    from keyplane.physical.analytic import analytic_key_rate, analytic_qber, analytic_rate_bps
    from keyplane.physical.cascade import (
        CascadeAlice,
        CascadeBob,
        CascadeStats,
        block_sizes,
        run_cascade,
    )
    from keyplane.physical.cascade_reference import cascade_reference
    from keyplane.physical.channel import BusChannel, ClassicalChannel, InProcessChannel
    from keyplane.physical.estimation import asymptotic_key_rate, plob_bound
    from keyplane.physical.finite_key import BlockCounts, FiniteKeyBound, finite_key_length
    from keyplane.physical.hashing import (
        polynomial_tag,
        toeplitz_bits,
        toeplitz_hash,
        toeplitz_hash_reference,
    )
    from keyplane.physical.modules import AliceModule, BlockOutcome, BobModule
    from keyplane.physical.network import PhysicalNetwork
    from keyplane.physical.physics import AliceRecord, BobRecord, LinkPhysics, emulate_frame
    from keyplane.physical.runner import LinkRunner, LinkStats, block_id_base
    from keyplane.physical.sink import KeyBlock, LinkKeySink, MemoryKeySink
    from keyplane.physical.wire import LinkCommand, LinkCommandReply

__all__ = [
    "AliceModule",
    "AliceRecord",
    "BlockCounts",
    "BlockOutcome",
    "BobModule",
    "BobRecord",
    "BusChannel",
    "CascadeAlice",
    "CascadeBob",
    "CascadeStats",
    "ClassicalChannel",
    "FiniteKeyBound",
    "InProcessChannel",
    "KeyBlock",
    "LinkCommand",
    "LinkCommandReply",
    "LinkKeySink",
    "LinkPhysics",
    "LinkRunner",
    "LinkStats",
    "MemoryKeySink",
    "PhysicalNetwork",
    "analytic_key_rate",
    "analytic_qber",
    "analytic_rate_bps",
    "asymptotic_key_rate",
    "block_id_base",
    "block_sizes",
    "cascade_reference",
    "emulate_frame",
    "finite_key_length",
    "plob_bound",
    "polynomial_tag",
    "run_cascade",
    "toeplitz_bits",
    "toeplitz_hash",
    "toeplitz_hash_reference",
]

_HOME: dict[str, str] = {
    "AliceModule": "keyplane.physical.modules",
    "AliceRecord": "keyplane.physical.physics",
    "BlockCounts": "keyplane.physical.finite_key",
    "BlockOutcome": "keyplane.physical.modules",
    "BobModule": "keyplane.physical.modules",
    "BobRecord": "keyplane.physical.physics",
    "BusChannel": "keyplane.physical.channel",
    "CascadeAlice": "keyplane.physical.cascade",
    "CascadeBob": "keyplane.physical.cascade",
    "CascadeStats": "keyplane.physical.cascade",
    "ClassicalChannel": "keyplane.physical.channel",
    "FiniteKeyBound": "keyplane.physical.finite_key",
    "InProcessChannel": "keyplane.physical.channel",
    "KeyBlock": "keyplane.physical.sink",
    "LinkCommand": "keyplane.physical.wire",
    "LinkCommandReply": "keyplane.physical.wire",
    "LinkKeySink": "keyplane.physical.sink",
    "LinkPhysics": "keyplane.physical.physics",
    "LinkRunner": "keyplane.physical.runner",
    "LinkStats": "keyplane.physical.runner",
    "MemoryKeySink": "keyplane.physical.sink",
    "PhysicalNetwork": "keyplane.physical.network",
    "analytic_key_rate": "keyplane.physical.analytic",
    "analytic_qber": "keyplane.physical.analytic",
    "analytic_rate_bps": "keyplane.physical.analytic",
    "asymptotic_key_rate": "keyplane.physical.estimation",
    "block_id_base": "keyplane.physical.runner",
    "block_sizes": "keyplane.physical.cascade",
    "cascade_reference": "keyplane.physical.cascade_reference",
    "emulate_frame": "keyplane.physical.physics",
    "finite_key_length": "keyplane.physical.finite_key",
    "plob_bound": "keyplane.physical.estimation",
    "polynomial_tag": "keyplane.physical.hashing",
    "run_cascade": "keyplane.physical.cascade",
    "toeplitz_bits": "keyplane.physical.hashing",
    "toeplitz_hash": "keyplane.physical.hashing",
    "toeplitz_hash_reference": "keyplane.physical.hashing",
}
"""Where each public name lives: the submodule is imported when the name is first read."""


__getattr__, __dir__ = lazy_exports(__name__, _HOME)
