"""The per-node virtual key manager (paper Fig. 2; DESIGN.md §1-2).

Public surface:

* :class:`KeyManager` — one per node; implements
  :class:`~keyplane.keymanager.interface.ApplicationService` for the ETSI 004/014 servers
  and is the physical layer's ``LinkKeySink`` (``put_block``) for its links.
* :class:`KmSettings` — named timeouts, queue limits, key-store thresholds.
* :class:`LinkKeyStore` — one end of one link's key stream (``put_block`` sink).
* :class:`SessionState` / :class:`SessionMachine` — the Fig. 2a cycle (pure core).
* :class:`TokenBucket`, :class:`PriorityQueues`, :class:`ForwardingTable` — pure cores.
* :class:`KmIdentity` — a KM's certificate for ML-KEM hops; :class:`HopSource` and the
  hybrid policy logic of :mod:`keyplane.keymanager.hybrid` (docs/hybrid.md).
"""

from keyplane.keymanager.forwarding import ForwardingEntry, ForwardingTable
from keyplane.keymanager.hybrid import HopSource
from keyplane.keymanager.keystore import LinkKeyStore, Segment, send_half
from keyplane.keymanager.km import KeyManager
from keyplane.keymanager.pqc import KmIdentity
from keyplane.keymanager.scheduling import PriorityQueues, TokenBucket
from keyplane.keymanager.session import SessionEvent, SessionMachine, SessionState
from keyplane.keymanager.settings import KmSettings

__all__ = [
    "ForwardingEntry",
    "ForwardingTable",
    "HopSource",
    "KeyManager",
    "KmIdentity",
    "KmSettings",
    "LinkKeyStore",
    "PriorityQueues",
    "Segment",
    "SessionEvent",
    "SessionMachine",
    "SessionState",
    "TokenBucket",
    "send_half",
]
