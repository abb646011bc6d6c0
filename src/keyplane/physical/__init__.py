"""The emulated QKD physical layer (digital twin): decoy-state BB84 links with real
post-processing, producing continuous identical key streams at both ends of each link.

Map (see docs/physical.md):

* :mod:`.physics`     link physics and the per-frame emulator (decoy intensities, Eve)
* :mod:`.sifting`     sifting, sampling, the sifted-key buffer
* :mod:`.estimation`  decoy-state bounds, GLLP secure length, asymptotic rate, PLOB
* :mod:`.cascade`     vectorized Cascade (and its per-bit reference)
* :mod:`.hashing`     Toeplitz privacy amplification by FFT, polynomial verification tag
* :mod:`.wire`        messages between QKD modules and link control
* :mod:`.channel`     ClassicalChannel: in-process and bus-backed
* :mod:`.modules`     Alice's and Bob's QKD modules (the protocol shell)
* :mod:`.runner`      LinkRunner: pacing on the clock, sinks, telemetry, faults
* :mod:`.frames`      block ids across restarts, per-end seeds, the runner's counters
* :mod:`.analytic_stream` the analytic mode's key stream (no per-bit simulation)
* :mod:`.network`     PhysicalNetwork: every link of a topology
* :mod:`.sink`        LinkKeySink protocol and MemoryKeySink

The package imports its modules on first use (PEP 562): ``keyplane link --help`` and the
modules that need one submodule do not pay for numpy and scipy up front.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from keyplane.physical.cascade import (
        CascadeAlice,
        CascadeBob,
        CascadeStats,
        block_sizes,
        cascade_reference,
        run_cascade,
    )
    from keyplane.physical.channel import BusChannel, ClassicalChannel, InProcessChannel
    from keyplane.physical.estimation import (
        DecoyBounds,
        DecoyCounts,
        asymptotic_key_rate,
        decoy_bounds,
        plob_bound,
        secure_length,
    )
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
    "BlockOutcome",
    "BobModule",
    "BobRecord",
    "BusChannel",
    "CascadeAlice",
    "CascadeBob",
    "CascadeStats",
    "ClassicalChannel",
    "DecoyBounds",
    "DecoyCounts",
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
    "asymptotic_key_rate",
    "block_id_base",
    "block_sizes",
    "cascade_reference",
    "decoy_bounds",
    "emulate_frame",
    "plob_bound",
    "polynomial_tag",
    "run_cascade",
    "secure_length",
    "toeplitz_bits",
    "toeplitz_hash",
    "toeplitz_hash_reference",
]

_HOME: dict[str, str] = {
    "AliceModule": "keyplane.physical.modules",
    "AliceRecord": "keyplane.physical.physics",
    "BlockOutcome": "keyplane.physical.modules",
    "BobModule": "keyplane.physical.modules",
    "BobRecord": "keyplane.physical.physics",
    "BusChannel": "keyplane.physical.channel",
    "CascadeAlice": "keyplane.physical.cascade",
    "CascadeBob": "keyplane.physical.cascade",
    "CascadeStats": "keyplane.physical.cascade",
    "ClassicalChannel": "keyplane.physical.channel",
    "DecoyBounds": "keyplane.physical.estimation",
    "DecoyCounts": "keyplane.physical.estimation",
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
    "asymptotic_key_rate": "keyplane.physical.estimation",
    "block_id_base": "keyplane.physical.runner",
    "block_sizes": "keyplane.physical.cascade",
    "cascade_reference": "keyplane.physical.cascade",
    "decoy_bounds": "keyplane.physical.estimation",
    "emulate_frame": "keyplane.physical.physics",
    "plob_bound": "keyplane.physical.estimation",
    "polynomial_tag": "keyplane.physical.hashing",
    "run_cascade": "keyplane.physical.cascade",
    "secure_length": "keyplane.physical.estimation",
    "toeplitz_bits": "keyplane.physical.hashing",
    "toeplitz_hash": "keyplane.physical.hashing",
    "toeplitz_hash_reference": "keyplane.physical.hashing",
}
"""Where each public name lives: the submodule is imported when the name is first read."""


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
