"""ETSI GS QKD 004 V2.1.1 status codes (clause 6.2, Table 10), names as in the standard."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["Etsi004Status"]


class Etsi004Status(IntEnum):
    """Status returned by OPEN_CONNECT, GET_KEY and CLOSE.

    Values 0-8 are the standard's (V2.1.1; the draft edition 3 renumbers them, so they are
    pinned here). 9 is a non-standard extension, as in other implementations (e.g. Quditto),
    for a Key_stream_ID the KM does not know (never opened, or already closed), or a chunk
    ``index`` this end already received (keys are delivered once).
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
    KSID_NOT_FOUND = 9
