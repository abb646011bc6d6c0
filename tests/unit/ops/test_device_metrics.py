"""A device's own series (keyplane.device.metrics): each end's keys, read at scrape time."""

from __future__ import annotations

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from keyplane.clock import VirtualClock
from keyplane.config import QuantumLink
from keyplane.device import DeviceKme
from keyplane.device.metrics import DeviceMetrics
from keyplane.keymanager.interface import Caller
from keyplane.ops import Ops

LINK = QuantumLink(endpoints=("km0", "km1"), length_km=10, protocol="analytic")
KM0, KM1 = Caller("CN=km0,OU=km,O=keyplane"), Caller("CN=km1,OU=km,O=keyplane")


def _samples(ops: Ops) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(ops.registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _at(node: str, **extra: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"link": "km0-km1", "node": node, **extra}.items()))


async def test_each_end_reports_what_it_holds_hands_out_and_loses(clock: VirtualClock) -> None:
    a = DeviceKme(LINK, "alice", sae_id="km0", peer_sae_id="km1", identity=KM0.identity,
                  clock=clock, key_size_bits=128, unclaimed_ttl_s=10.0)
    b = DeviceKme(LINK, "bob", sae_id="km1", peer_sae_id="km0", identity=KM1.identity,
                  clock=clock, key_size_bits=128, unclaimed_ttl_s=10.0)
    ops = Ops("device-km0-km1")
    ops.registry.register(DeviceMetrics([a, b]))
    for end in (a, b):  # six 128-bit keys: 0, 2, 4 are Alice's; 1, 3, 5 Bob's
        await end.put_block(LINK.link_id, 1, bytes(96))
    seen = _samples(ops)
    assert seen[("keyplane_device_keys", _at("km0", kind="stored"))] == 3
    assert seen[("keyplane_device_keys", _at("km0", kind="unclaimed"))] == 3

    mine = await a.enc_keys(KM0, "km0", "km1", 2, 128)
    await b.dec_keys(KM1, "km1", "km0", [k.key_id for k in mine])
    seen = _samples(ops)
    assert seen[("keyplane_device_keys", _at("km0", kind="stored"))] == 1
    assert seen[("keyplane_device_keys", _at("km1", kind="unclaimed"))] == 1
    assert seen[("keyplane_device_keys_delivered_total", _at("km0"))] == 2
    assert seen[("keyplane_device_keys_delivered_total", _at("km1"))] == 2

    await clock.advance(11.0)  # Alice's third key was never claimed at Bob's end
    b.has_room()  # an end expires unclaimed keys when it is next asked
    seen = _samples(ops)
    assert seen[("keyplane_device_keys_expired_total", _at("km1"))] == 1
    assert seen[("keyplane_device_keys", _at("km1", kind="unclaimed"))] == 0
    assert seen[("keyplane_device_keys_expired_total", _at("km0"))] == 0
