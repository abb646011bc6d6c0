"""The sample applications' stream loop (demo/scenario.py) against scripted endpoints."""

from __future__ import annotations

import hashlib
from typing import Any

from keyplane.demo.scenario import SaePair, run_pair
from keyplane.errors import KeyNotFound, KeyplaneError, QosNotMet
from keyplane.messages import Qos


class Scripted:
    """An ETSI 004 endpoint whose key at index i is sha256(i); ``gone`` indexes answer
    "not found" (a key its KM marked delivered before dying)."""

    def __init__(self, sae_id: str, gone: set[int] = frozenset(),  # type: ignore[assignment]
                 refusals: int = 0, refusal: Exception | None = None) -> None:
        self.sae_id = sae_id
        self.gone = set(gone)
        self.asked: list[int] = []
        self.refusals = refusals  # OPEN_CONNECTs answered with ``refusal`` first
        self.refusal = refusal or QosNotMet("no route yet")
        self.opened: list[str] = []

    async def open(self, destination: str, qos: Qos, key_stream_id: str) -> str:
        self.opened.append(key_stream_id)
        if len(self.opened) <= self.refusals:
            raise self.refusal
        return key_stream_id

    async def get_key(self, key_stream_id: str, index: int) -> tuple[bytes, dict[str, Any]]:
        self.asked.append(index)
        if index in self.gone:
            raise KeyNotFound(f"index {index} is not available")
        key = hashlib.sha256(index.to_bytes(4, "big")).digest()
        return key, {"key_ID": f"id-{index}"}

    async def close(self, key_stream_id: str) -> None:
        return None


async def test_run_pair_skips_one_index_lost_at_one_end_and_still_gets_every_key() -> None:
    a, b = Scripted("sa", gone={3}), Scripted("sb")
    res = await run_pair(SaePair("sa", "sb"), a, b, keys=6, timeout_s=5)
    assert res.status == "closed" and res.lost_indexes == [3]
    assert res.keys_delivered == res.keys_matched == 6
    assert a.asked == b.asked == [0, 1, 2, 3, 4, 5, 6]


async def test_run_pair_fails_on_a_second_lost_index_or_one_lost_at_both_ends() -> None:
    twice = await run_pair(SaePair("sa", "sb"), Scripted("sa", gone={1, 4}), Scripted("sb"),
                           keys=6, timeout_s=5)
    assert twice.status == "failed" and twice.lost_indexes == [1] and twice.keys_delivered == 3
    both = await run_pair(SaePair("sa", "sb"), Scripted("sa", gone={2}),
                          Scripted("sb", gone={2}), keys=6, timeout_s=5)
    assert both.status == "failed" and both.lost_indexes == [] and "KeyNotFound" in both.error


async def test_run_pair_opens_again_with_a_new_stream_id_after_a_refusal() -> None:
    a, b = Scripted("sa", refusals=2), Scripted("sb", refusals=2)
    res = await run_pair(SaePair("sa", "sb"), a, b, keys=2, timeout_s=30)
    assert res.status == "closed" and res.open_attempts == 3 and res.keys_delivered == 2
    assert len(set(a.opened)) == 3 and a.opened == b.opened  # a fresh id per attempt
    assert res.key_stream_id == a.opened[-1]


async def test_run_pair_does_not_retry_other_open_failures() -> None:
    a = Scripted("sa", refusals=5, refusal=KeyplaneError("unauthorized"))
    res = await run_pair(SaePair("sa", "sb"), a, Scripted("sb"), keys=2, timeout_s=30)
    assert res.status == "failed" and res.open_attempts == 1 and "unauthorized" in res.error
