"""QKD devices over ETSI 014: the device's KME ends (pure) and the KMs' device ends against a
real device served over HTTPS with mutual TLS, in this process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from keyplane.bus import MemoryBus
from keyplane.certs import ensure_network_certs
from keyplane.clock import RealClock, VirtualClock
from keyplane.config import QuantumLink, Topology, parse_topology
from keyplane.device import DeviceKme, DeviceSettings, QkdDevice, device_key_id
from keyplane.errors import AuthenticationFailed, InsufficientKeyMaterial, KeyNotFound
from keyplane.keymanager.interface import Caller
from keyplane.keymanager.sources import DeviceKeyIds, Etsi014LinkEnd, KeySources
from keyplane.physical import MemoryKeySink
from keyplane.physical.pool import EmulationSettings
from tests.support.deadlines import DEADLINE_S

LINK = QuantumLink(endpoints=("km0", "km1"), length_km=10, protocol="analytic")
KM0, KM1 = Caller("CN=km0,OU=km,O=keyplane"), Caller("CN=km1,OU=km,O=keyplane")


def _ends(clock: VirtualClock, **kw: object) -> tuple[DeviceKme, DeviceKme]:
    a = DeviceKme(LINK, "alice", sae_id="km0", peer_sae_id="km1", identity=KM0.identity,
                  clock=clock, key_size_bits=128, **kw)  # type: ignore[arg-type]
    b = DeviceKme(LINK, "bob", sae_id="km1", peer_sae_id="km0", identity=KM1.identity,
                  clock=clock, key_size_bits=128, **kw)  # type: ignore[arg-type]
    return a, b


async def _feed(a: DeviceKme, b: DeviceKme, block_id: int, material: bytes) -> None:
    await a.put_block(LINK.link_id, block_id, material)
    await b.put_block(LINK.link_id, block_id, material)


async def test_each_end_gives_its_own_keys_as_master_and_the_others_once_as_slave(
        clock: VirtualClock) -> None:
    a, b = _ends(clock)
    material = bytes(range(64))  # four 128-bit keys: 0, 2 are Alice's, 1, 3 Bob's
    await _feed(a, b, 10, material)
    assert (await a.status(KM0, "km0", "km1")).stored_key_count == 2
    mine = await a.enc_keys(KM0, "km0", "km1", 2, 128)
    assert [k.key_id for k in mine] == [device_key_id(LINK.link_id, 10, i) for i in (0, 2)]
    assert [k.key for k in mine] == [material[0:16], material[32:48]]
    got = await b.dec_keys(KM1, "km1", "km0", [k.key_id for k in mine])
    assert [k.key for k in got] == [k.key for k in mine]
    with pytest.raises(KeyNotFound):  # once only
        await b.dec_keys(KM1, "km1", "km0", [mine[0].key_id])
    theirs = await b.enc_keys(KM1, "km1", "km0", 2, 128)
    assert {k.key for k in theirs}.isdisjoint({k.key for k in mine})
    with pytest.raises(InsufficientKeyMaterial):
        await a.enc_keys(KM0, "km0", "km1", 1, 128)


async def test_device_refuses_other_callers_slaves_sizes_and_old_blocks(
        clock: VirtualClock) -> None:
    a, b = _ends(clock)
    await _feed(a, b, 10, bytes(64))
    with pytest.raises(AuthenticationFailed):
        await a.enc_keys(KM1, "km0", "km1", 1, 128)  # km1's certificate claiming km0
    with pytest.raises(KeyNotFound):
        await a.enc_keys(KM0, "km0", "km9", 1, 128)
    with pytest.raises(InsufficientKeyMaterial):
        await a.enc_keys(KM0, "km0", "km1", 1, 256)
    with pytest.raises(KeyNotFound):
        await b.dec_keys(KM1, "km1", "km0", [device_key_id(LINK.link_id, 10, 1)])  # Bob's own
    with pytest.raises(Exception, match="not new"):
        await a.put_block(LINK.link_id, 10, bytes(64))
    assert (await a.status(KM0, "km0", "km1")).stored_key_count == 2  # nothing taken


async def test_unclaimed_keys_expire_and_a_full_end_pauses_the_link(clock: VirtualClock) -> None:
    a, b = _ends(clock, capacity_keys=4, unclaimed_ttl_s=10.0)
    await _feed(a, b, 1, bytes(64))
    assert not a.has_room()  # 2 own + 2 awaiting dec_keys
    await a.enc_keys(KM0, "km0", "km1", 2, 128)
    assert a.has_room()
    await clock.advance(11.0)  # Bob's keys at Alice's end were never claimed
    assert (await b.status(KM1, "km1", "km0")).stored_key_count == 2
    assert a.has_room() and a.keys_expired == 2


CHAIN = """
name: device-unit
nodes: [{id: km0}, {id: km1}]
links:
  - {endpoints: [km0, km1], length_km: 10, protocol: analytic}
"""


def _keyed(urls: dict[str, str]) -> Topology:
    ends = ", ".join(f"{n}: {{url: '{u}'}}" for n, u in urls.items())
    return parse_topology(CHAIN.replace(
        "protocol: analytic}", "protocol: analytic, source: {kind: etsi014, "
        f"keys_per_request: 8, poll_interval_s: 0.05, ends: {{{ends}}}}}}}"))


async def test_two_kms_take_identical_blocks_from_a_device_over_mtls(tmp_path: Path) -> None:
    plain = parse_topology(CHAIN)
    certs = ensure_network_certs(plain, tmp_path / "certs")
    settings = DeviceSettings(emulation=EmulationSettings(mode="inprocess", time_scale=20.0))
    bus = MemoryBus()
    clock = RealClock()
    async with QkdDevice(plain, "km0-km1", state_dir=tmp_path, settings=settings) as dev:
        topo = _keyed(dev.urls)
        sinks = {("km0", "km0-km1"): MemoryKeySink(), ("km1", "km0-km1"): MemoryKeySink()}
        async with KeySources(topo, sinks, clock=clock, bus=bus, events=dev.events,
                              credentials=certs.kms, ca=certs.ca.cert) as sources:
            assert sources.emulated is None and len(sources.device_ends) == 2
            async with asyncio.timeout(DEADLINE_S):
                while min(s.qsize() for s in sinks.values()) < 4:
                    await asyncio.sleep(0.05)  # the device produces in real time
            end0 = sources.device_ends[("km0", "km0-km1")]
            # a forged hand-over from a node that is not the peer is refused
            forged = await end0.on_key_ids(DeviceKeyIds(sender="km9", link_id="km0-km1",
                                                        block_id=3, key_ids=[]))
            assert not forged.ok
    a = {k.block_id: k.material for k in sinks[("km0", "km0-km1")].drain()}
    b = {k.block_id: k.material for k in sinks[("km1", "km0-km1")].drain()}
    common = set(a) & set(b)
    assert len(common) >= 3 and all(a[i] == b[i] for i in common)
    assert {i & 1 for i in common} == {0, 1}  # both KMs were masters of their direction
    assert all(len(m) == 8 * 32 for m in a.values())
    await bus.close()


async def test_km_end_reports_an_unreachable_device_and_takes_nothing(tmp_path: Path) -> None:
    topo = _keyed({"km0": "https://127.0.0.1:9", "km1": "https://127.0.0.1:9"})
    certs = ensure_network_certs(topo, tmp_path / "certs")
    sink = MemoryKeySink()
    bus = MemoryBus()
    end = Etsi014LinkEnd(topo.links[0], "km0", sink, bus, RealClock(), credentials=certs.kms["km0"],
                         ca=certs.ca.cert)
    async with end:
        async with asyncio.timeout(DEADLINE_S):
            while end.reachable:
                await asyncio.sleep(0.05)  # poll interval; the timeout above bounds it
    assert sink.qsize() == 0 and end.last_error is not None
    await bus.close()


async def test_one_end_devices_on_two_hosts_agree_over_their_classical_channel(
        tmp_path: Path) -> None:
    plain = parse_topology(CHAIN)
    bus = MemoryBus()  # the two device processes' bus (NATS between hosts)
    settings = DeviceSettings(key_size_bits=128, emulation=EmulationSettings(time_scale=20.0))
    async with QkdDevice(plain, "km0-km1", state_dir=tmp_path, end="km1", bus=bus,
                         settings=settings) as bob, \
            QkdDevice(plain, "km0-km1", state_dir=tmp_path, end="km0", bus=bus,
                      settings=settings) as alice:
        ka, kb = alice.kmes["km0"], bob.kmes["km1"]
        async with asyncio.timeout(DEADLINE_S):
            while (await ka.status(KM0, "km0", "km1")).stored_key_count < 4:
                await asyncio.sleep(0.05)  # the device produces in real time
        mine = await ka.enc_keys(KM0, "km0", "km1", 4, 128)
        async with asyncio.timeout(DEADLINE_S):
            while True:  # Bob's end may store the same blocks a moment later
                try:
                    got = await kb.dec_keys(KM1, "km1", "km0", [k.key_id for k in mine])
                    break
                except KeyNotFound:
                    await asyncio.sleep(0.05)  # retry pace; the timeout above bounds it
    assert [(k.key_id, k.key) for k in got] == [(k.key_id, k.key) for k in mine]
    await bus.close()
