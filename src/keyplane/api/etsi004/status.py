"""ETSI GS QKD 004 V2.1.1 status codes (clause 6.2, Table 10), names as in the standard."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Etsi004Status"]


class Etsi004Status(IntEnum):
    """Status returned by OPEN_CONNECT, GET_KEY and CLOSE: the standard's values 0-8 only.

    Pinned to V2.1.1 (the draft edition 3 renumbers them). keyplane sends no other value;
    the cases other implementations answer with a non-standard 9 ("stream not found") map
    to the standard's codes (:mod:`keyplane.api.errors`, docs/api/etsi004.md):

    * a Key_stream_ID this KM has no stream of the caller for: 4, no QKD connection;
    * GET_KEY on a stream that ended (the peer or the caller closed it, Admission Control
      deleted it, it idled): 3, peer application not connected;
    * GET_KEY of an ``index`` this end already received (keys are delivered once): 2,
      no key available at that index.
    """

    SUCCESSFUL = 0
    PEER_NOT_CONNECTED = 1
    GK_INSUFFICIENT_KEY_AVAILABLE = 2
    GK_PEER_NOT_CONNECTED = 3
    NO_QKD_CONNECTION_AVAILABLE = 4
    OC_KSID_ALREADY_IN_USE = 5
    TIMEOUT_ERROR = 6
    OC_QOS_NOT_SATISFIABLE = 7
    GK_METADATA_INSUFFICIENT_SIZE = 8
