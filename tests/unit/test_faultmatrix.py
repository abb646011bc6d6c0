"""The fault matrix's bookkeeping (keyplane.faultmatrix): what counts as lost, twice,
reused; the events reader survives a line cut by SIGKILL."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from keyplane.cluster import read_events, restartable_port
from keyplane.events import Event, EventType
from keyplane.faultmatrix import (
    FaultResult,
    FaultSpec,
    Ledger,
    MatrixSettings,
    check,
    link_key_reuse,
    phase_times,
    share_014,
    stale_link_alarms,
    wait_flowing,
)


def _relayed(n: int, link: str, segments: list[str], keys: list[str], wall: float = 0.0
             ) -> Event:
    return Event(event_id=n, seq=n, t=wall, wall=wall, type=EventType.key_relayed,
                 element="km", node="km1",
                 data={"link_id": link, "link_key_ids": segments, "key_ids": keys})


def test_link_key_reuse_is_overlapping_bytes_for_other_keys() -> None:
    events = [_relayed(1, "a-b", ["7:0+64"], ["k1", "k2"]),
              _relayed(2, "a-b", ["7:0+64"], ["k1", "k2"]),   # a retransmission: same keys
              _relayed(3, "a-b", ["7:64+32"], ["k3"]),        # adjacent bytes: fine
              _relayed(4, "b-c", ["7:0+64"], ["k4"])]         # another link's block 7
    assert link_key_reuse(events) == []
    reused = link_key_reuse([*events, _relayed(5, "a-b", ["7:90+10"], ["k9"])])
    assert reused == ["a-b block 7 bytes [90, 96) padded ['k3'] and ['k9']"]


def test_check_counts_one_end_only_twice_and_other_bytes_by_fault() -> None:
    ledger = Ledger()
    ledger.got_master("k1", b"\x01" * 32)
    ledger.got_slave("k1", b"\x01" * 32)
    ledger.got_master("k2", b"\x02" * 32)            # never reached the slave
    ledger.got_master("k3", b"\x03" * 32)
    ledger.got_slave("k3", b"\x04" * 32)             # other bytes
    ledger.got_stream("a", "s", 0, b"\x05" * 32)
    ledger.got_stream("b", "s", 0, b"\x05" * 32)
    ledger.got_stream("a", "s", 1, b"\x06" * 32)     # index 1 only at end a
    ledger.got_master("k4", b"\x01" * 32)            # k1's bytes again under another id
    started = ledger.master["k2"][1] - 1.0
    fault = FaultResult(FaultSpec("f", "nats", duration_s=1), started, started + 1, 1.0)
    report = check(ledger, [], [fault])
    assert report.lost_014 == ["k2", "k4"] and report.lost_004 == ["s[1]"]
    assert report.mismatched == ["k3"]
    assert report.duplicated == ["014: the bytes of k1 again as k4"]
    assert report.lost_by_fault == {"f": 3}
    assert report.keys_014 == 2 and report.keys_004 == 1
    # a key refused at its other end during a later fault is that fault's
    later = FaultResult(FaultSpec("g", "postgres", duration_s=1), started + 5, started + 6, 1.0)
    ledger.refused["k2"] = started + 5.5
    assert check(ledger, [], [fault, later]).lost_by_fault == {"f": 2, "g": 1}
    delivered_twice = Event(event_id=1, seq=1, t=0, wall=0, type=EventType.key_delivered,
                            element="km", node="km2", data={"key_ids": ["k1"]})
    assert check(ledger, [delivered_twice, delivered_twice], []).duplicated[-1] == (
        "km2 delivered k1 2 times")


def test_completions_are_counted_once_when_both_ends_hold_the_key() -> None:
    ledger = Ledger()
    ledger.got_master("k1", b"\x01" * 32)
    assert ledger.completions_014() == []
    ledger.got_slave("k1", b"\x01" * 32)
    ledger.got_slave("k2", b"\x02" * 32)            # the slave first: complete at the master
    ledger.got_master("k2", b"\x02" * 32)
    ledger.got_slave("k1", b"\x01" * 32)            # handed out twice: not a second key
    ledger.got_stream("b", "s", 0, b"\x03" * 32)
    ledger.got_stream("a", "s", 0, b"\x03" * 32)
    done = ledger.completions_014()
    assert len(done) == 2 and done == sorted(done)
    assert len(ledger.completions_004()) == 1
    assert ledger.repeats == ["slave: k1 twice"]


def test_the_keys_are_spread_over_the_intervals_around_the_faults() -> None:
    st = MatrixSettings(keys_014=2000)
    assert share_014(st, 6) == 286 and 7 * share_014(st, 6) >= 2000
    assert share_014(MatrixSettings(keys_014=0), 6) == 0


async def test_waiting_for_a_share_fails_on_a_stall_not_on_a_total() -> None:
    ledger = Ledger()
    st = MatrixSettings(flowing_keys=1, flowing_timeout_s=0.05)
    for i in range(3):
        ledger.got_master(f"k{i}", bytes([i]) * 32)
        ledger.got_slave(f"k{i}", bytes([i]) * 32)
    ledger.got_stream("a", "s", 0, b"\x09" * 32)
    ledger.got_stream("b", "s", 0, b"\x09" * 32)
    assert await wait_flowing(ledger, 0.0, st, keys_014=3)
    # four wanted, three came and nothing more: it stops once nothing arrived for the bound
    assert not await wait_flowing(ledger, 0.0, st, keys_014=4)


async def test_a_stalled_stream_is_a_stall_while_etsi_014_keys_flow() -> None:
    ledger = Ledger()
    st = MatrixSettings(flowing_keys=1, flowing_timeout_s=0.2)
    stop = asyncio.Event()

    async def keys_014() -> None:  # the ETSI 014 pair keeps completing keys, the stream none
        i = 0
        while not stop.is_set():
            ledger.got_master(f"k{i}", i.to_bytes(32, "big"))
            ledger.got_slave(f"k{i}", i.to_bytes(32, "big"))
            i += 1
            await asyncio.sleep(0.02)  # the pair's pace, not a synchronisation

    feeder = asyncio.create_task(keys_014())
    try:
        assert not await wait_flowing(ledger, 0.0, st, keys_014=10**9)
    finally:
        stop.set()
        await feeder


def test_read_events_skips_a_line_cut_by_a_kill(tmp_path: Path) -> None:
    ok = _relayed(1, "a-b", ["1:0+8"], ["k"], wall=5.0).model_dump_json()
    later = _relayed(2, "a-b", ["1:8+8"], ["j"], wall=6.0).model_dump_json()
    (tmp_path / "events-km1.jsonl").write_text(ok + "\n" + ok[:40] + later + "\n" + later
                                               + "\n")
    events = read_events(tmp_path)
    assert [e.event_id for e in events] == [1, 2]


def test_a_link_held_down_while_it_makes_key_is_found() -> None:
    def alarm(n: int, kind: str, wall: float) -> Event:
        return Event(event_id=n, seq=n, t=wall, wall=wall, type=EventType.alarm,
                     element="monitoring", data={"link": "a-b", "kind": kind})

    def block(n: int, wall: float) -> Event:
        return Event(event_id=n, seq=n, t=wall, wall=wall, type=EventType.link_block,
                     element="physical", node="a", data={"link_id": "a-b"})

    blocks = [block(10 + i, 100.0 + i) for i in range(5)]
    assert stale_link_alarms([alarm(1, "link_down", 50.0), *blocks]) == [
        "a-b: link_down alarm not cleared, 5 blocks delivered since"]
    assert stale_link_alarms([alarm(1, "link_down", 50.0), alarm(2, "cleared", 60.0),
                              *blocks]) == []
    assert stale_link_alarms([alarm(1, "link_down", 103.0), *blocks]) == []  # grace


def test_restartable_ports_are_free_and_below_the_ephemeral_range() -> None:
    """A server restarted on its port (a killed node, nats-server, PostgreSQL) must not
    find it taken by one of its own clients' connections meanwhile."""
    first = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {restartable_port() for _ in range(20)}
    assert all(p < first for p in ports)
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))  # free: it binds


def test_phases_of_a_kill_are_the_restarted_elements_first_steps_after_its_end() -> None:
    def ev(n: int, wall: float, type: EventType, element: str, node: str | None,
           **data: object) -> Event:
        return Event(event_id=n, seq=n, t=wall, wall=wall, type=type, element=element,
                     node=node, data=data)

    events = [ev(1, 99.0, EventType.key_relayed, "km", "km0"),        # before the kill
              ev(2, 104.0, EventType.element_started, "km", "km0"),
              ev(3, 104.5, EventType.configured, "admission", "km0", repushed=True),
              ev(4, 106.0, EventType.key_relayed, "km", "km1"),       # another KM
              ev(5, 107.0, EventType.key_relayed, "km", "km0"),
              ev(6, 108.0, EventType.key_delivered, "km", "km1")]
    kill = FaultResult(FaultSpec("kill km0", "kill", "km0"), started=100.0, ended=105.0,
                       recovery_s=5.0)
    assert phase_times(events, kill) == {
        "bus": -1.0, "session": -0.5, "link_key": 2.0, "delivered": None}
    # the controller: its admission back, any KM's relay and delivery
    ctl = FaultResult(FaultSpec("kill ctl", "kill", "controller"), started=100.0,
                      ended=105.0, recovery_s=5.0)
    restored = [*events, ev(7, 105.5, EventType.element_started, "admission", None),
                ev(8, 105.6, EventType.session_restored, "admission", "km1")]
    assert phase_times(restored, ctl) == {
        "bus": 0.5, "session": pytest.approx(0.6), "link_key": 1.0, "delivered": 3.0}
    assert phase_times(events, FaultResult(FaultSpec("nats", "nats", duration_s=3), 0, 3,
                                           3)) == {}
