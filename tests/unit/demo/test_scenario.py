"""The sample applications' stream loop (demo/scenario.py) against scripted endpoints."""

from __future__ import annotations

import hashlib
from types import SimpleNamespace
from typing import Any

import pytest

from keyplane.demo import scenario
from keyplane.demo.scenario import SaePair, run_pair
from keyplane.errors import (
    InsufficientKeyMaterial,
    KeyNotFound,
    KeyplaneError,
    KeyWaitExpired,
    PeerNotConnected,
    PeerUnreachable,
    QosNotMet,
    RelayTimeout,
)
from keyplane.keymanager.interface import Caller
from keyplane.messages import Qos


class Scripted:
    """An ETSI 004 endpoint whose key at index i is sha256(i); ``gone`` indexes answer
    "not found" (a key its KM marked delivered before dying)."""

    def __init__(self, sae_id: str, gone: set[int] = frozenset(),  # type: ignore[assignment]
                 refusals: int = 0, refusal: Exception | None = None,
                 expired: dict[int, int] | None = None) -> None:
        self.sae_id = sae_id
        self.gone = set(gone)
        self.expired = dict(expired or {})  # index -> GET_KEYs answered "timeout" first
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
        if self.expired.get(index, 0) > 0:
            self.expired[index] -= 1
            raise KeyWaitExpired(f"no key for index {index} within the request's timeout")
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


async def test_run_pair_asks_again_for_an_index_whose_wait_expired_at_one_end() -> None:
    # ETSI 004 status 6 (a loaded machine made link key slower than the request's timeout):
    # the index is still the application's; it is fetched again, not skipped or failed
    a, b = Scripted("sa"), Scripted("sb", expired={1: 3})
    res = await run_pair(SaePair("sa", "sb"), a, b, keys=3, timeout_s=30)
    assert res.status == "closed" and res.keys_delivered == res.keys_matched == 3
    assert b.asked == [0, 1, 1, 1, 1, 2] and a.asked == [0, 1, 2]


async def test_run_pair_fails_when_the_wait_keeps_expiring_past_its_stall_bound() -> None:
    res = await run_pair(SaePair("sa", "sb"), Scripted("sa"),
                         Scripted("sb", expired={0: 10**9}), keys=2, timeout_s=0.2)
    assert res.status == "failed" and "KeyWaitExpired" in res.error and res.keys_delivered == 0


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


class Slow(Scripted):
    """Each GET_KEY takes ``step_s`` of a fake clock; index ``stall`` answers "not yet"
    (InsufficientKeyMaterial) ``stall_calls`` times first."""

    def __init__(self, sae_id: str, clock: list[float], step_s: float, stall: int = -1,
                 stall_calls: int = 0) -> None:
        super().__init__(sae_id)
        self.clock, self.step_s = clock, step_s
        self.stall, self.stall_calls = stall, stall_calls

    async def get_key(self, key_stream_id: str, index: int) -> tuple[bytes, dict[str, Any]]:
        self.clock[0] += self.step_s
        if index == self.stall and self.stall_calls > 0:
            self.stall_calls -= 1
            raise InsufficientKeyMaterial("not yet")
        return await super().get_key(key_stream_id, index)


async def test_run_pair_bounds_the_time_without_progress_not_the_whole_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """A pair that outlasts a fault (a KM restarted on a loaded machine) is not cut short
    by the time its earlier keys took; a pair that makes no progress for ``stall_s`` is."""
    clock = [0.0]
    monkeypatch.setattr(scenario, "time", SimpleNamespace(monotonic=lambda: clock[0]))
    slow = await run_pair(SaePair("sa", "sb"), Slow("sa", clock, 4.0), Slow("sb", clock, 4.0),
                          keys=6, timeout_s=10, stall_s=10)
    assert slow.status == "closed" and slow.keys_delivered == 6  # 48 s in all
    clock[0] = 0.0
    stuck = await run_pair(SaePair("sa", "sb"), Slow("sa", clock, 4.0, stall=2, stall_calls=3),
                           Slow("sb", clock, 4.0), keys=6, timeout_s=10, stall_s=10)
    assert stuck.status == "failed" and stuck.keys_delivered == 2
    assert "InsufficientKeyMaterial" in stuck.error


class Ending(Scripted):
    """An endpoint whose stream ends under it (its KM closed it: GET_KEY status 3) at index
    ``end_at`` of the first stream it opened; a stream opened later works."""

    def __init__(self, sae_id: str, end_at: int) -> None:
        super().__init__(sae_id)
        self.end_at = end_at
        self.closed: list[str] = []

    async def get_key(self, key_stream_id: str, index: int) -> tuple[bytes, dict[str, Any]]:
        if key_stream_id == self.opened[0] and index >= self.end_at:
            self.asked.append(index)
            raise PeerNotConnected(f"stream {key_stream_id} has ended")
        return await super().get_key(key_stream_id, index)

    async def close(self, key_stream_id: str) -> None:
        self.closed.append(key_stream_id)


async def test_run_pair_opens_a_new_stream_when_its_stream_ends_and_carries_on() -> None:
    # one end got index 2 of the first stream, the other's KM had ended it: the pair drops
    # that index, closes, agrees a new Key_stream_ID and fetches the rest on the new stream
    a, b = Scripted("sa"), Ending("sb", end_at=2)
    res = await run_pair(SaePair("sa", "sb"), a, b, keys=5, timeout_s=5)
    assert res.status == "closed" and res.reopened == 1 and res.lost_indexes == [2]
    assert res.keys_delivered == res.keys_matched == 5
    assert len(set(b.opened)) == 2 and res.ended_streams == [b.opened[0]]
    assert b.closed[0] == b.opened[0] and res.key_stream_id == b.opened[1]


async def test_run_pair_gives_up_after_its_reopen_limit() -> None:
    class AlwaysEnding(Ending):
        async def get_key(self, key_stream_id: str, index: int
                          ) -> tuple[bytes, dict[str, Any]]:
            raise PeerNotConnected(f"stream {key_stream_id} has ended")

    res = await run_pair(SaePair("sa", "sb"), AlwaysEnding("sa", 0), AlwaysEnding("sb", 0),
                         keys=3, timeout_s=5, reopen_limit=2)
    assert res.status == "failed" and res.reopened == 2 and "PeerNotConnected" in res.error
    assert res.lost_indexes == []  # both ends lost the stream: no key at one end only


@pytest.mark.parametrize(("exc", "retried"), [
    (RelayTimeout("index 4 not relayed within the QoS timeout"), True),  # status 6
    (KeyWaitExpired("no link key within the timeout"), True),  # status 6
    (PeerUnreachable("no route"), True),  # status 4
    (InsufficientKeyMaterial("none yet"), True),  # status 2
    (TimeoutError(), True),  # status 6 (a wait in the KM's queue)
    (KeyNotFound("index 4 was already delivered"), False),
    (PeerNotConnected("the stream ended"), False),  # status 3: the pair opens a new one
])
async def test_the_embedded_endpoint_leaves_an_index_to_fetch_again_as_its_status_says(
        exc: Exception, retried: bool) -> None:
    """In process, as over HTTPS: GET_KEY answered with status 2, 4 or 6 is asked again
    (InsufficientKeyMaterial to run_pair); another failure is the failure itself."""
    class Km:
        async def get_key(self, *_a: object, **_k: object) -> object:
            raise exc

    ep = scenario.ServiceEndpoint("sa", Km(), Caller("CN=a"))  # type: ignore[arg-type]
    with pytest.raises((KeyplaneError, TimeoutError)) as got:
        await ep.get_key("sid", 4)
    assert isinstance(got.value, InsufficientKeyMaterial) is retried
    if not retried:
        assert got.value is exc
    assert "sid" not in ep.received  # nothing was received: nothing to confirm next time


async def test_a_pair_that_gives_up_names_the_kms_own_error() -> None:
    """Retried as status 6 until the stall bound, then reported as what it was."""
    class Km:
        async def open_connect(self, _c: object, _s: str, _d: str, _q: Qos, sid: str
                               ) -> object:
            return SimpleNamespace(key_stream_id=sid)

        async def get_key(self, *_a: object, **_k: object) -> object:
            raise RelayTimeout("index 0 not relayed within the QoS timeout")

        async def close_stream(self, *_a: object) -> None:
            return None

    a = scenario.ServiceEndpoint("sa", Km(), Caller("CN=a"))  # type: ignore[arg-type]
    b = scenario.ServiceEndpoint("sb", Km(), Caller("CN=b"))  # type: ignore[arg-type]
    res = await run_pair(SaePair("sa", "sb"), a, b, keys=1, timeout_s=0.2)
    assert res.status == "failed" and res.error.startswith("RelayTimeout: index 0"), res.error
