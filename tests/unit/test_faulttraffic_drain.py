"""The fault traffic's ETSI 004 drain: once the traffic stops, each end fetches up to the
index the other end got *or is fetching*. An end that stopped while the other's last
GET_KEY was in flight left that index at one end only (a fault-matrix run counted it as a
lost key; the KMs had lost nothing). ``Traffic._other_end_next`` alone: it uses no part of
the cluster."""

from __future__ import annotations

from typing import Any, cast

from keyplane.faulttraffic import Ledger, MatrixSettings, Traffic


def test_an_end_drains_up_to_the_index_the_other_end_is_fetching() -> None:
    ledger = Ledger()
    traffic = Traffic(cast(Any, None), ledger, MatrixSettings(), pair_014=("sa", "sb"),
                      pair_004=("sc", "sd"))
    for i in range(210):
        ledger.got_stream("a", "s1", i, i.to_bytes(4, "big"))
        ledger.got_stream("b", "s1", i, i.to_bytes(4, "big"))
    assert traffic._other_end_next("b", "s1") == 210  # a got up to 209: b stops at 210
    traffic._asking[("a", "s1")] = 210  # a's GET_KEY of 210 in flight
    assert traffic._other_end_next("b", "s1") == 211  # b must fetch 210 too
    assert traffic._other_end_next("a", "s1") == 210  # b is not fetching: a stops
    assert traffic._other_end_next("b", "other-stream") == 0  # another stream: none
